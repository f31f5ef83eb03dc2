"""A home directory as developers really fill it: every kind of secret the scan must refuse,
each in the file and path where a tool writes it, and beside them what must pass (public
keys, certificates, placeholders, documented example values, files that name a secret kept
elsewhere). Values are drawn at run time from a seeded generator in each kind's own format,
so the repository holds no secret and the corpus is the same on every run. No pytest here:
the comparison of rule sets in docs/secrets.md runs on it too."""

from __future__ import annotations

import base64
import gzip
import io
import json
import random
import string
import tarfile
from dataclasses import dataclass, field

H = "/home/user"
UPPER_DIGITS = string.ascii_uppercase + string.digits
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


@dataclass(frozen=True)
class Plant:
    path: str
    kind: str  # the issue's name for it: what a user would call it
    data: bytes
    line: int = 0  # the line the secret is on (1-based), where the kind has one


@dataclass
class Corpus:
    planted: list[Plant] = field(default_factory=list)
    decoys: dict[str, bytes] = field(default_factory=dict)

    def files(self) -> dict[str, bytes]:
        out = dict(self.decoys)
        for p in self.planted:
            assert p.path not in out, p.path
            out[p.path] = p.data
        return out


class Gen:
    """Made-up values in each kind's format."""

    def __init__(self, seed: int = 16) -> None:
        self.r = random.Random(seed)

    def s(self, n: int, alphabet: str = ALNUM) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def raw(self, n: int) -> bytes:
        return bytes(self.r.getrandbits(8) for _ in range(n))

    def b64(self, n: int) -> str:
        return base64.b64encode(self.raw(n)).decode()

    def pem(self, label: str, headers: str = "", body: bytes = b"", n: int = 600) -> str:
        text = base64.b64encode(body + self.raw(n)).decode()
        lines = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
        return f"-----BEGIN {label}-----\n{headers}{lines}\n-----END {label}-----\n"

    def uuid(self) -> str:
        h = self.s(32, HEX)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def jwt(self) -> str:
        head = base64.urlsafe_b64encode(b'{"alg":"RS256","kid":"' + self.s(20).encode()
                                        + b'"}').decode().rstrip("=")
        body = base64.urlsafe_b64encode(json.dumps({
            "iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:default:ci",
            "nonce": self.s(24)}).encode()).decode().rstrip("=")
        return f"{head}.{body}.{self.s(86, ALNUM + '-_')}"


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _openpgp_packet(tag: int, body: bytes) -> bytes:
    """A new-format OpenPGP packet (RFC 4880 4.2) with a five-octet length."""
    return bytes([0xC0 | tag, 0xFF]) + len(body).to_bytes(4, "big") + body


def _openpgp_key(g: Gen, tag: int) -> bytes:
    """A v4 Ed25519 key packet (tag 5 secret, 6 public), a user id, a signature."""
    public = b"\x04" + g.raw(4) + b"\x16\x09\x2b\x06\x01\x04\x01\xda\x47\x0f\x01" \
        + b"\x01\x07\x40" + g.raw(32)
    body = public + (b"\x00\x01\x00" + g.raw(32) + b"\x00\x00" if tag == 5 else b"")
    uid = _openpgp_packet(13, b"U Ser <u@example.invalid>")
    return _openpgp_packet(tag, body) + uid + _openpgp_packet(2, b"\x04\x13" + g.raw(80))


def _elf(rodata: bytes) -> bytes:
    """A minimal ELF64 file whose one section (.rodata-like, PROGBITS) holds `rodata`."""
    import struct
    shoff = 64 + len(rodata) + (-len(rodata) % 8)
    header = (b"\x7fELF\x02\x01\x01" + bytes(9)
              + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, 0, 0, shoff, 0, 64, 56, 0, 64, 2, 0))
    section = struct.pack("<IIQQQQIIQQ", 0, 1, 2, 0, 64, len(rodata), 0, 0, 1, 0)
    return header + rodata.ljust(shoff - 64, b"\0") + bytes(64) + section


def _line(text: str, needle: str) -> int:
    return text[:text.index(needle)].count("\n") + 1


def build(seed: int = 16) -> Corpus:
    g = Gen(seed)
    c = Corpus()

    def plant(path: str, kind: str, text: str | bytes, needle: str = "") -> None:
        data = text.encode() if isinstance(text, str) else text
        line = _line(text, needle) if needle and isinstance(text, str) else 0
        c.planted.append(Plant(path, kind, data, line))

    def decoy(path: str, text: str | bytes) -> None:
        c.decoys[path] = text.encode() if isinstance(text, str) else text

    # ---- private keys in every armour -------------------------------------------------------
    plant(f"{H}/.ssh/id_ed25519", "OpenSSH private key",
          g.pem("OPENSSH PRIVATE KEY", body=b"openssh-key-v1\0", n=300), "BEGIN")
    decoy(f"{H}/.ssh/id_ed25519.pub", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{g.b64(24)} "
          "user@laptop\n")
    plant(f"{H}/.ssh/id_rsa", "PEM private key (PKCS#1 RSA)",
          g.pem("RSA PRIVATE KEY", n=1190), "BEGIN")
    decoy(f"{H}/.ssh/id_rsa.pub", f"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{g.b64(380)} u@h\n")
    plant(f"{H}/.ssh/id_ecdsa", "PEM private key (EC)", g.pem("EC PRIVATE KEY", n=121),
          "BEGIN")
    plant(f"{H}/.ssh/id_dsa", "PEM private key (DSA)", g.pem("DSA PRIVATE KEY", n=440),
          "BEGIN")
    plant(f"{H}/.ssh/legacy_rsa", "PEM private key (encrypted, Proc-Type)", g.pem(
        "RSA PRIVATE KEY", "Proc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,"
        f"{g.s(32, '0123456789ABCDEF')}\n\n", n=1190), "BEGIN")
    decoy(f"{H}/.ssh/known_hosts", f"github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"
          f"{g.b64(24)}\n|1|{g.b64(20)}|{g.b64(20)} ecdsa-sha2-nistp256 AAAAE2VjZHNh{g.b64(90)}\n")
    decoy(f"{H}/.ssh/authorized_keys", f"sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5"
          f"{g.b64(60)} yubikey\n")
    decoy(f"{H}/.ssh/config", "Host *\n  IdentityFile ~/.ssh/id_ed25519_sk\n"
          "  IdentityAgent ~/.gnupg/S.gpg-agent.ssh\n")
    plant(f"{H}/certs/client.key", "PEM private key (PKCS#8)", g.pem("PRIVATE KEY", n=1217),
          "BEGIN")
    decoy(f"{H}/certs/client.crt", g.pem("CERTIFICATE", n=900))
    decoy(f"{H}/certs/client.csr", g.pem("CERTIFICATE REQUEST", n=700))
    decoy(f"{H}/certs/server-pub.pem", g.pem("PUBLIC KEY", n=294))
    plant(f"{H}/.config/syncthing/key.pem", "PEM private key (PKCS#8 encrypted)",
          g.pem("ENCRYPTED PRIVATE KEY", n=1300), "BEGIN")
    decoy(f"{H}/.config/syncthing/cert.pem", g.pem("CERTIFICATE", n=500))
    plant(f"{H}/keys/secret-subkeys.asc", "PGP private key block", g.pem(
        "PGP PRIVATE KEY BLOCK", "Comment: gpg --export-secret-subkeys\n\n", n=900), "BEGIN")
    decoy(f"{H}/keys/public.asc", g.pem("PGP PUBLIC KEY BLOCK", "\n", n=900))
    decoy(f"{H}/keys/release.sig", g.pem("PGP SIGNATURE", "\n", n=300))
    ppk = (f"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: work\n"
           f"Public-Lines: 2\n{g.b64(48)[:64]}\n{g.b64(9)}\nPrivate-Lines: 1\n{g.b64(36)}\n"
           f"Private-MAC: {g.s(64, HEX)}\n")
    plant(f"{H}/.putty/keys/work.ppk", "PuTTY private key", ppk, "PuTTY-User-Key-File")
    decoy(f"{H}/.putty/keys/work.pub", f"---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"work\"\n"
          f"{g.b64(48)}\n---- END SSH2 PUBLIC KEY ----\n")
    age_pub = "age1" + g.s(58, BECH32)
    age = (f"# created: 2026-11-30T10:00:00+01:00\n# public key: {age_pub}\n"
           f"AGE-SECRET-KEY-1{g.s(58, BECH32).upper()}\n")
    plant(f"{H}/.config/sops/age/keys.txt", "age secret key", age, "AGE-SECRET-KEY-1")
    decoy(f"{H}/projects/infra/.sops.yaml",
          f"creation_rules:\n  - path_regex: secrets/.*\\.yaml$\n    age: {age_pub}\n")
    # GnuPG's own store: the extended key format of private-keys-v1.d
    gpg_key = (f"Created: 20261130T100000\nKey: (private-key (ecc (curve Ed25519)(flags eddsa)"
               f"(q #40{g.s(64, '0123456789ABCDEF')}#)\n (d #{g.s(64, '0123456789ABCDEF')}#)))\n")
    plant(f"{H}/.gnupg/private-keys-v1.d/{g.s(40, '0123456789ABCDEF')}.key",
          "GnuPG private key (private-keys-v1.d)", gpg_key, "(private-key")
    # a stub: the key lives on a card, the file only says which one
    decoy(f"{H}/.gnupg/private-keys-v1.d/{g.s(40, '0123456789ABCDEF')}.key",
          f"Token: D2760001240100000006{g.s(12, '0123456789')}0000 OPENPGP.1 -\n"
          f"Key: (shadowed-private-key (rsa (n #00{g.s(256, '0123456789ABCDEF')}#)(e #010001#)"
          "(shadowed t1-v1 (#D2760001240103040006000000000000# OPENPGP.1))))\n")
    decoy(f"{H}/.gnupg/pubring.kbx", b"\x00\x00\x00\x20\x01\x01\x00\x02KBXf"
          + _openpgp_key(g, 6))
    decoy(f"{H}/.gnupg/gpg-agent.conf", "enable-ssh-support\npinentry-program "
          "/usr/bin/pinentry-curses\n")
    plant(f"{H}/backup/secret-key.gpg", "OpenPGP secret key (binary export)",
          _openpgp_key(g, 5))
    decoy(f"{H}/backup/public-key.gpg", _openpgp_key(g, 6))
    # keys inside compressed files in the home
    plant(f"{H}/backup/dotssh.tar.gz", "private key inside a .tar.gz", _tar_gz({
        ".ssh/id_ed25519": g.pem("OPENSSH PRIVATE KEY", body=b"openssh-key-v1\0",
                                 n=300).encode(),
        ".ssh/id_ed25519.pub": b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + g.b64(24).encode()}))
    decoy(f"{H}/backup/dotfiles.tar.gz", _tar_gz({
        ".bashrc": b"alias ll='ls -l'\n", ".ssh/id_ed25519.pub":
        b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + g.b64(24).encode()}))
    plant(f"{H}/old/id_rsa.gz", "private key inside a .gz",
          gzip.compress(g.pem("RSA PRIVATE KEY", n=1190).encode(), mtime=0))
    decoy(f"{H}/old/notes.txt.gz", gzip.compress(b"nothing to see\n" * 50, mtime=0))
    # a key past the first 64 MiB of a large file (a database dump)
    filler = ("INSERT INTO log VALUES (" + ",".join(["'x'"] * 30) + ");\n").encode()
    big = filler * ((65 << 20) // len(filler) + 1)
    plant(f"{H}/dumps/app.sql", "private key after the first 64 MiB",
          big + b"-- deploy key\n" + g.pem("OPENSSH PRIVATE KEY", body=b"openssh-key-v1\0",
                                          n=300).encode())
    # a file that starts with the ELF magic and carries a key
    plant(f"{H}/bin/deploy", "private key in a file with the ELF magic",
          b"\x7fELF\x02\x01\x01" + bytes(9) + b"\n" + g.pem(
              "OPENSSH PRIVATE KEY", body=b"openssh-key-v1\0", n=300).encode())

    # a real ELF: a key in its section is a compiled-in test vector; one appended is not
    test_vector = g.pem("RSA PRIVATE KEY", n=600).encode()
    decoy(f"{H}/bin/tls-selftest", _elf(b"selftest vector\0" + test_vector))
    elf = _elf(b"vector\0" + test_vector) + b"\n" + g.pem(
        "OPENSSH PRIVATE KEY", body=b"openssh-key-v1\0", n=300).encode()
    plant(f"{H}/bin/sync-tool", "private key appended to an ELF binary", elf)

    # ---- cloud credentials -----------------------------------------------------------------
    sa = json.dumps({
        "type": "service_account", "project_id": "acme-prod-123456",
        "private_key_id": g.s(40, HEX),
        "private_key": g.pem("PRIVATE KEY", n=1217),
        "client_email": "deployer@acme-prod-123456.iam.gserviceaccount.com",
        "client_id": g.s(21, string.digits),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token"}, indent=2)
    plant(f"{H}/.config/gcloud/acme-prod-123456-{g.s(12, HEX)}.json",
          "GCP service-account key (JSON, escaped newlines)", sa, "private_key\"")
    adc = json.dumps({
        "account": "", "client_id": "764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur"
        ".apps.googleusercontent.com", "client_secret": "d-FL95Q19q7MQmFpd7hHD0Ty",
        "quota_project_id": "acme-dev", "refresh_token": "1//0" + g.s(99, ALNUM + "-_"),
        "type": "authorized_user", "universe_domain": "googleapis.com"}, indent=2)
    plant(f"{H}/.config/gcloud/application_default_credentials.json",
          "GCP user credentials (refresh token)", adc, "refresh_token")
    decoy(f"{H}/.config/gcloud/configurations/config_default",
          "[core]\naccount = user@example.com\nproject = acme-dev\n\n[compute]\n"
          "region = europe-west1\n")
    decoy(f"{H}/.config/gcloud/active_config", "default")
    gmaps = f"AIza{g.s(35, ALNUM + '-_')}"
    plant(f"{H}/projects/maps/.env", "GCP API key", f"PORT=8080\nMAPS_API_KEY={gmaps}\n",
          "MAPS_API_KEY")
    aws_id, aws_secret = "AKIA" + g.s(16, UPPER_DIGITS), g.s(40, ALNUM + "/+")
    aws = (f"[default]\naws_access_key_id = {aws_id}\naws_secret_access_key = {aws_secret}\n")
    plant(f"{H}/.aws/credentials", "AWS access key", aws, "aws_access_key_id")
    decoy(f"{H}/.aws/config", "[default]\nregion = eu-west-1\noutput = json\n\n"
          "[profile work]\nsso_start_url = https://acme.awsapps.com/start\nsso_region = "
          "eu-west-1\nsso_account_id = 123456789012\nsso_role_name = Dev\n")
    decoy(f"{H}/projects/infra/README.md", "Configure the CLI:\n\n    aws_access_key_id = "
          "AKIAIOSFODNN7EXAMPLE\n    aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/"
          "bPxRfiCYEXAMPLEKEY\n")
    sts = json.dumps({"Credentials": {
        "AccessKeyId": "ASIA" + g.s(16, UPPER_DIGITS), "SecretAccessKey": g.s(40, ALNUM + "/+"),
        "SessionToken": "IQoJb3JpZ2luX2Vj" + g.s(300, ALNUM + "/+"),
        "Expiration": "2026-12-01T12:00:00Z"}, "AssumedRoleUser": {
        "AssumedRoleId": "AROA" + g.s(17, UPPER_DIGITS) + ":botocore-session"}}, indent=2)
    plant(f"{H}/.aws/cli/cache/{g.s(40, HEX)}.json", "AWS session credentials (CLI cache)",
          sts, "AccessKeyId")
    az_conn = (f"AZURE_STORAGE_CONNECTION_STRING=\"DefaultEndpointsProtocol=https;"
               f"AccountName=acmeprod;AccountKey={g.b64(64)};"
               "EndpointSuffix=core.windows.net\"\n")
    plant(f"{H}/projects/uploader/.env", "Azure storage account key", az_conn, "AccountKey")
    msal = json.dumps({"AccessToken": {f"{g.uuid()}-login.microsoftonline.com-accesstoken": {
        "credential_type": "AccessToken", "secret": "eyJ0eXAiOiJKV1Qi" + g.s(900, ALNUM + "-_."),
        "home_account_id": g.uuid(), "environment": "login.microsoftonline.com"}},
        "RefreshToken": {f"{g.uuid()}-login.microsoftonline.com-refreshtoken": {
            "credential_type": "RefreshToken", "secret": "1.AQ" + g.s(700, ALNUM + "-_")}}},
        indent=1)
    plant(f"{H}/.azure/msal_token_cache.json", "Azure CLI token cache", msal)
    decoy(f"{H}/.azure/azureProfile.json", json.dumps({"subscriptions": [{
        "id": g.uuid(), "name": "Dev", "tenantId": g.uuid(), "user": {
            "name": "user@example.com", "type": "user"}, "isDefault": True}]}))
    decoy(f"{H}/.azure/config", "[cloud]\nname = AzureCloud\n[core]\noutput = table\n")

    # ---- registry and auth files -----------------------------------------------------------
    docker = json.dumps({"auths": {"ghcr.io": {"auth": base64.b64encode(
        b"user:" + g.s(36).encode()).decode()}, "https://index.docker.io/v1/": {}},
        "credsStore": ""}, indent="\t")
    plant(f"{H}/.docker/config.json", "Docker registry auth", docker, "\"auth\"")
    decoy(f"{H}/projects/app/.docker/config.json", json.dumps({
        "auths": {"https://index.docker.io/v1/": {}, "ghcr.io": {}},
        "credsStore": "desktop", "currentContext": "default"}, indent="\t"))
    npm = (f"registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken="
           f"npm_{g.s(36)}\n")
    plant(f"{H}/.npmrc", "npm token (.npmrc)", npm, "_authToken")
    decoy(f"{H}/projects/app/.npmrc", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n"
          "save-exact=true\n")
    pypirc = ("[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = __token__\n"
              f"password = pypi-AgEIcHlwaS5vcmc{g.s(140, ALNUM + '-_')}\n")
    plant(f"{H}/.pypirc", "PyPI token (.pypirc)", pypirc, "password")
    decoy(f"{H}/projects/lib/.pypirc", "[distutils]\nindex-servers = pypi\n\n[pypi]\n"
          "username = __token__\n# password from the keyring\n")
    plant(f"{H}/.gem/credentials", "RubyGems API key",
          f"---\n:rubygems_api_key: rubygems_{g.s(48, HEX)}\n", ":rubygems_api_key")
    plant(f"{H}/.cargo/credentials.toml", "crates.io token (cargo)",
          f"[registry]\ntoken = \"cio{g.s(32)}\"\n", "token")
    decoy(f"{H}/.cargo/config.toml", "[build]\njobs = 2\n\n[registry]\n"
          "global-credential-providers = [\"cargo:libsecret\"]\n")

    # ---- VCS tokens --------------------------------------------------------------------------
    gh = (f"github.com:\n    user: user\n    oauth_token: gho_{g.s(36)}\n"
          "    git_protocol: ssh\n")
    plant(f"{H}/.config/gh/hosts.yml", "GitHub OAuth token (gh)", gh, "oauth_token")
    decoy(f"{H}/.config/gh/config.yml", "version: \"1\"\ngit_protocol: ssh\neditor: vim\n"
          "aliases:\n    co: pr checkout\n")
    zshenv = (f"export EDITOR=vim\nexport GITHUB_TOKEN=ghp_{g.s(36)}\nexport PATH=$HOME/bin:"
              "$PATH\n")
    plant(f"{H}/.zshenv", "GitHub personal access token", zshenv, "GITHUB_TOKEN")
    fish = f"set -gx GH_ENTERPRISE_TOKEN github_pat_{g.s(22)}_{g.s(59)}\n"
    plant(f"{H}/.config/fish/conf.d/tokens.fish", "GitHub fine-grained token", fish,
          "github_pat_")
    decoy(f"{H}/.config/fish/config.fish", "set -gx GITHUB_TOKEN (pass show github/token)\n"
          "fish_add_path ~/.local/bin\n")
    glab = (f"git_protocol: ssh\nhosts:\n    gitlab.com:\n        token: glpat-{g.s(20)}\n"
            "        api_protocol: https\n        user: user\n")
    plant(f"{H}/.config/glab-cli/config.yml", "GitLab personal access token", glab, "token:")
    bb = (f"# bitbucket pipelines deploy\nexport BITBUCKET_CLIENT_ID={g.s(18)}\n"
          f"export BITBUCKET_CLIENT_SECRET={g.s(64)}\n")
    plant(f"{H}/.profile", "Bitbucket OAuth consumer secret", bb, "BITBUCKET_CLIENT_SECRET")
    gitcred = f"https://user:{g.s(20)}@bitbucket.org\n"
    plant(f"{H}/.git-credentials", "git credentials (~/.git-credentials)", gitcred, "https")
    xdg = f"https://oauth2:glpat-{g.s(20)}@gitlab.example.com\n"
    plant(f"{H}/.config/git/credentials", "git credentials (XDG ~/.config/git/credentials)",
          xdg, "https")
    decoy(f"{H}/.config/git/config", "[user]\n\tname = U Ser\n\temail = u@example.com\n"
          "[credential]\n\thelper = cache --timeout=3600\n[url \"https://user@github.com/\"]"
          "\n\tinsteadOf = gh:\n")

    # ---- chat and SaaS tokens ---------------------------------------------------------------
    slack = (f"SLACK_BOT_TOKEN=xoxb-{g.s(12, string.digits)}-{g.s(13, string.digits)}-"
             f"{g.s(24)}\nSLACK_CHANNEL=#deploys\n")
    plant(f"{H}/projects/bot/.env", "Slack bot token", slack, "xoxb")
    decoy(f"{H}/projects/bot/.env.example", "SLACK_BOT_TOKEN=xoxb-your-token-here\n"
          "SLACK_CHANNEL=#deploys\n")
    hook = (f"#!/bin/sh\ncurl -s -X POST -d \"{{\\\"text\\\": \\\"$1\\\"}}\" \\\n  https://hooks"
            f".slack.com/services/T{g.s(8, UPPER_DIGITS)}/B{g.s(10, UPPER_DIGITS)}/{g.s(24)}\n")
    plant(f"{H}/.local/bin/notify", "Slack webhook", hook, "hooks.slack.com")
    stripe = (f"[default]\ndevice_name = laptop\nlive_mode_api_key = 'sk_live_{g.s(99)}'\n"
              f"live_mode_publishable_key = 'pk_live_{g.s(99)}'\n")
    plant(f"{H}/.config/stripe/config.toml", "Stripe live secret key", stripe,
          "live_mode_api_key")
    openai = f"OPENAI_API_KEY=sk-{g.s(20)}T3BlbkFJ{g.s(20)}\nDEFAULT_MODEL=gpt-4o\n"
    plant(f"{H}/.config/shell_gpt/.sgptrc", "OpenAI API key", openai, "OPENAI_API_KEY")
    anthropic = (f"# ~/.bashrc.d/ai.sh\nexport ANTHROPIC_API_KEY=sk-ant-api03-"
                 f"{g.s(93, ALNUM + '-_')}AA\n")
    plant(f"{H}/.bashrc.d/ai.sh", "Anthropic API key", anthropic, "ANTHROPIC_API_KEY")
    decoy(f"{H}/.bashrc", "[ -f ~/.bashrc.d/ai.sh ] && . ~/.bashrc.d/ai.sh\n"
          "export ANTHROPIC_API_KEY=\"$(pass show anthropic)\"\nalias ll='ls -l'\n"
          "export HISTFILE=/dev/null\n")
    twilio = json.dumps({"profiles": {"default": {
        "accountSid": "AC" + g.s(32, HEX), "apiKey": "SK" + g.s(32, HEX),
        "apiSecret": g.s(32)}}, "activeProject": "default"}, indent=2)
    plant(f"{H}/.twilio-cli/config.json", "Twilio API key", twilio, "apiKey")
    sendgrid = f"SENDGRID_API_KEY=SG.{g.s(22, ALNUM + '-_')}.{g.s(43, ALNUM + '-_')}\n"
    plant(f"{H}/projects/mailer/.env", "SendGrid API key", sendgrid, "SENDGRID")
    plant(f"{H}/.vault-token", "HashiCorp Vault token", f"hvs.{g.s(90, ALNUM + '_-')}")
    hf = f"hf_{g.s(34, string.ascii_letters)}"
    plant(f"{H}/.cache/huggingface/token", "Hugging Face token", hf)
    tf = json.dumps({"credentials": {"app.terraform.io": {
        "token": f"{g.s(14)}.atlasv1.{g.s(67)}"}}}, indent=2)
    plant(f"{H}/.terraform.d/credentials.tfrc.json", "Terraform Cloud token", tf, "token")
    doctl = (f"access-token: dop_v1_{g.s(64, HEX)}\ncontext: default\noutput: text\n")
    plant(f"{H}/.config/doctl/config.yaml", "DigitalOcean token", doctl, "access-token")

    # ---- kubeconfig --------------------------------------------------------------------------
    ca = base64.b64encode(g.pem("CERTIFICATE", n=700).encode()).decode()
    kube_token = (f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                  f"    certificate-authority-data: {ca}\n    server: https://10.0.0.1:6443\n"
                  "  name: ci\ncontexts:\n- context: {cluster: ci, user: ci}\n  name: ci\n"
                  f"current-context: ci\nusers:\n- name: ci\n  user:\n    token: {g.jwt()}\n")
    plant(f"{H}/.kube/config", "kubeconfig bearer token", kube_token, "token:")
    key_data = base64.b64encode(g.pem("EC PRIVATE KEY", n=121).encode()).decode()
    kube_key = (f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
                f"    certificate-authority-data: {ca}\n    server: https://127.0.0.1:6443\n"
                "  name: default\nusers:\n- name: default\n  user:\n"
                f"    client-certificate-data: {ca}\n    client-key-data: {key_data}\n")
    plant(f"{H}/.kube/k3s.yaml", "kubeconfig client key", kube_key, "client-key-data")
    decoy(f"{H}/.kube/eks.yaml", f"apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n"
          f"    certificate-authority-data: {ca}\n    server: https://ABC.gr7.eu-west-1.eks."
          "amazonaws.com\n  name: eks\nusers:\n- name: eks\n  user:\n    exec:\n"
          "      apiVersion: client.authentication.k8s.io/v1beta1\n      command: aws\n"
          "      args: [eks, get-token, --cluster-name, prod]\n")

    # ---- databases, .netrc and friends -------------------------------------------------------
    plant(f"{H}/.pgpass", ".pgpass password",
          f"# host:port:db:user:password\ndb.internal:5432:app:app:{g.s(20)}\n", "db.internal")
    plant(f"{H}/.my.cnf", ".my.cnf password",
          f"[client]\nuser = root\npassword = \"{g.s(16)}\"\nhost = 127.0.0.1\n", "password")
    decoy("/etc/mysql/conf.d/mysql.cnf", "[mysql]\n")
    decoy(f"{H}/.psqlrc", "\\set PROMPT1 '%n@%/%R%# '\n\\pset null '(null)'\n")
    plant(f"{H}/.netrc", ".netrc password",
          f"machine api.heroku.com\n  login u@example.com\n  password {g.uuid()}\n", "password")
    decoy("/root/.netrc", "machine ftp.debian.org login anonymous\n")
    plant(f"{H}/.authinfo", ".authinfo password",
          f"machine imap.gmail.com login u@example.com port 993 password {g.s(16, 'abcdefgh')}\n")
    decoy(f"{H}/.authinfo.gpg", b"\x85\x01\x0c\x03" + g.raw(270))  # encrypted: what to ship

    # ---- shell and REPL histories ------------------------------------------------------------
    for name, text in [
            (".bash_history", "ls\nexport AWS_PROFILE=work\n"),
            (".zsh_history", ": 1764583200:0;git push\n"),
            (".histfile", ": 1764583200:0;mysql -u root -phunter2\n"),
            (".zhistory", ": 1764583200:0;ls\n"),
            (".python_history", "import requests\n"),
            (".local/share/fish/fish_history", "- cmd: ls\n  when: 1764583200\n"),
            (".psql_history", "\\dt\n"),
            (".mysql_history", "show databases;\n"),
            (".node_repl_history", "require('os')\n"),
            (".sqlite_history", ".tables\n")]:
        plant(f"{H}/{name}", f"history ({name.rsplit('/', 1)[-1]})", text)
    decoy(f"{H}/.local/share/recently-used.xbel", "<?xml version=\"1.0\"?>\n<xbel/>\n")
    decoy("/root/.bash_history", "")  # empty: nothing recorded

    # ---- Wi-Fi and sync tools ---------------------------------------------------------------
    nm = (f"[connection]\nid=Home\nuuid={g.uuid()}\ntype=wifi\n\n[wifi]\nmode=infrastructure\n"
          f"ssid=Home\n\n[wifi-security]\nkey-mgmt=wpa-psk\npsk={g.s(20)}\n\n[ipv4]\n"
          "method=auto\n")
    plant("/etc/NetworkManager/system-connections/Home.nmconnection",
          "NetworkManager Wi-Fi PSK", nm, "psk=")
    decoy("/etc/NetworkManager/system-connections/Office.nmconnection",
          f"[connection]\nid=Office\nuuid={g.uuid()}\ntype=wifi\n\n[wifi]\nssid=Office\n\n"
          "[wifi-security]\nkey-mgmt=wpa-psk\npsk-flags=1\n")
    plant("/etc/wpa_supplicant/wpa_supplicant.conf", "wpa_supplicant PSK",
          f"ctrl_interface=/run/wpa_supplicant\nnetwork={{\n\tssid=\"Home\"\n"
          f"\tpsk={g.s(64, HEX)}\n}}\n", "psk=")
    rclone = (f"[b2]\ntype = b2\naccount = {g.s(25, HEX)}\nkey = {g.s(31)}\n\n[drive]\n"
              "type = drive\nscope = drive\n")
    plant(f"{H}/.config/rclone/rclone.conf", "rclone remote credentials", rclone, "key =")
    decoy(f"{H}/projects/sync/rclone.conf", "[drive]\ntype = drive\nscope = drive\n"
          "[crypt]\ntype = crypt\nremote = drive:enc\n")
    s3cfg = (f"[default]\naccess_key = AKIA{g.s(16, UPPER_DIGITS)}\nhost_base = s3.amazonaws.com"
             f"\nsecret_key = {g.s(40, ALNUM + '/+')}\nuse_https = True\n")
    plant(f"{H}/.s3cfg", "s3cmd credentials", s3cfg, "access_key")

    # ---- more decoys: what a real home and a real /etc hold ---------------------------------
    decoy(f"{H}/projects/app/config/settings.py", "SECRET_KEY = os.environ['SECRET_KEY']\n"
          "DATABASES = {'default': {'PASSWORD': os.getenv('DB_PASSWORD', '')}}\n")
    decoy(f"{H}/projects/app/docker-compose.yml", "services:\n  db:\n    image: postgres:16\n"
          "    environment:\n      POSTGRES_PASSWORD_FILE: /run/secrets/db_password\n")
    decoy(f"{H}/projects/app/docs/api.md", "Send `Authorization: Bearer <token>`; keys look "
          "like `sk_live_...` or `ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx`.\n")
    decoy(f"{H}/projects/app/uuids.txt", f"{g.uuid()}\n{g.uuid()}\n")
    decoy(f"{H}/projects/app/package-lock.json", json.dumps({"packages": {"node_modules/x": {
        "integrity": "sha512-" + g.b64(64), "resolved": "https://registry.npmjs.org/x/-/x-1.0.0"
        ".tgz"}}}, indent=2))
    decoy(f"{H}/.gitconfig", "[user]\n\tsigningkey = 0x" + g.s(16, "0123456789ABCDEF")
          + "\n[commit]\n\tgpgsign = true\n")
    decoy(f"{H}/.wget-hsts", "# HSTS 1.0 Known Hosts database for GNU Wget.\n"
          "github.com\t0\t1\t1764583200\t31536000\n")
    decoy("/etc/ssl/certs/ca-certificates.crt", g.pem("CERTIFICATE", n=900) * 3)
    return c
