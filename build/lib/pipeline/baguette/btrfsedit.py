"""In-place edits of an unmounted btrfs image that mkfs.btrfs cannot make: device numbers,
growing the filesystem to its file, and pinning what mkfs draws at random or reads from the
clock (so that two builds of the same inputs give the same bytes).

Technical details. `mkfs.btrfs --rootdir` writes every device node with rdev 0 (btrfs-progs
mkfs/rootdir.c, `stat_to_inode_item`, up to 6.17 at least), and a user cannot make device
nodes anyway, so the packer stages each one as an empty regular file and this module turns
its inode into the device: the inode item's mode and rdev, and the file type byte of its
directory entries (DIR_ITEM, DIR_INDEX). Growing (btrfs-progs 6.17's `filesystem resize
--offline` does the same) sets the device item's and the superblock's total_bytes. Each edit
overwrites fixed-size fields of existing items, so no item moves and no tree changes shape;
the edited tree blocks get a new crc32c and are written to every copy (DUP metadata). The
image is `btrfs check`ed afterwards by the pack stage (baguette/check.py).

Pinning (`pin`) replaces, as mkfs.btrfs 6.14 has no option for them: the chunk tree UUID (in
every tree block header and device extent; uuid_generate in mkfs/common.c), each subvolume's
UUID (and so the UUID tree's keys) and its root item's times (time(NULL)), the inode times
mkfs copies from the staging tree that no user can set (ctime, and atime) by the inode's own
mtime, and the times of the trees' own root directories (data relocation tree) by `clock`.

Only what mkfs.btrfs writes is supported: one device, crc32c checksums, no log tree.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import PipelineError

SUPER_OFFSETS = (0x10000, 0x4000000, 0x4000000000)  # primary and mirrors
SUPER_SIZE = 4096
MAGIC = b"_BHRfS_M"
HEADER = 101  # tree block header
ITEM = 25  # leaf item: key (17) + offset + size
KEY_PTR = 33  # node pointer: key (17) + blockptr + generation
INODE_ITEM, INODE_REF, DIR_ITEM, DIR_INDEX = 1, 12, 84, 96
ROOT_ITEM, DEV_EXTENT, DEV_ITEM, CHUNK_ITEM = 132, 204, 216, 228
UUID_KEY_SUBVOL, UUID_KEY_RECEIVED = 251, 252
UUID_TREE, FIRST_SUBVOL, DATA_RELOC_TREE = 9, 256, 2**64 - 9
FT = {stat.S_IFCHR: 3, stat.S_IFBLK: 4}  # btrfs file types of device nodes


def crc32c(data: bytes) -> int:
    """btrfs' checksum (Castagnoli), in hardware where the CPU has it (the crc32c package)."""
    import crc32c as _crc

    return int(_crc.crc32c(data))


def _bad(what: str, image: Path) -> PipelineError:
    return PipelineError(f"{image}: {what}",
                         hint="this btrfs layout is not what mkfs.btrfs --rootdir writes; "
                         "report it with your btrfs-progs version")


@dataclass(frozen=True)
class Chunk:
    logical: int
    length: int
    physicals: tuple[int, ...]  # one per stripe (DUP: two)
    type: int = 0  # BTRFS_BLOCK_GROUP_*: 1 data, 2 system, 4 metadata

    @property
    def metadata(self) -> bool:
        return bool(self.type & 6)


class Image:
    """An open btrfs image file: its superblock, chunk map and tree blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        sb = os.pread(self.fd, SUPER_SIZE, SUPER_OFFSETS[0])
        if sb[0x40:0x48] != MAGIC:
            raise _bad("no btrfs superblock", path)
        if struct.unpack_from("<H", sb, 0xC4)[0] != 0:
            raise _bad("the checksum type is not crc32c", path)
        self.nodesize = struct.unpack_from("<I", sb, 0x94)[0]
        self.root, self.chunk_root = struct.unpack_from("<QQ", sb, 0x50)
        if struct.unpack_from("<Q", sb, 0x60)[0]:
            raise _bad("it has a log tree", path)
        self.chunks: list[Chunk] = []
        size = struct.unpack_from("<I", sb, 0xA0)[0]
        array = sb[0x32B:0x32B + size]
        pos = 0
        while pos < len(array):
            logical = struct.unpack_from("<Q", array, pos + 9)[0]
            chunk, used = self._chunk(array, pos + 17, logical)
            self.chunks.append(chunk)
            pos += 17 + used
        for data, _phys in list(self.blocks(self.chunk_root)):
            for key, item in _leaf_items(data):
                if key[1] == CHUNK_ITEM and not any(c.logical == key[2] for c in self.chunks):
                    self.chunks.append(self._chunk(data, HEADER + item[0], key[2])[0])

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _chunk(buf: bytes, off: int, logical: int) -> tuple[Chunk, int]:
        length = struct.unpack_from("<Q", buf, off)[0]
        type_ = struct.unpack_from("<Q", buf, off + 24)[0]
        num_stripes = struct.unpack_from("<H", buf, off + 44)[0]
        physicals = tuple(struct.unpack_from("<Q", buf, off + 48 + 32 * i + 8)[0]
                          for i in range(num_stripes))
        return Chunk(logical, length, physicals, type_), 48 + 32 * num_stripes

    def physicals(self, logical: int) -> tuple[int, ...]:
        for c in self.chunks:
            if c.logical <= logical < c.logical + c.length:
                return tuple(p + logical - c.logical for p in c.physicals)
        raise _bad(f"no chunk maps logical address {logical}", self.path)

    def read_block(self, logical: int, check: bool = True) -> bytes:
        data = os.pread(self.fd, self.nodesize, self.physicals(logical)[0])
        if check and not self.valid(data):
            raise _bad(f"tree block {logical} has a bad checksum", self.path)
        return data

    def valid(self, data: bytes) -> bool:
        return len(data) == self.nodesize and struct.unpack_from("<I", data)[0] == crc32c(
            data[32:])

    def write_block(self, logical: int, data: bytearray) -> None:
        struct.pack_into("<I", data, 0, crc32c(bytes(data[32:])))
        for phys in self.physicals(logical):
            os.pwrite(self.fd, data, phys)

    def blocks(self, logical: int, nodes: bool = False) -> Iterator[tuple[bytes, int]]:
        """Every leaf (and with `nodes` every node) of the tree rooted at `logical`, in key
        order: (block, its logical address)."""
        data = self.read_block(logical)
        level = data[100]
        if level == 0 or nodes:
            yield data, logical
        if level == 0:
            return
        nritems = struct.unpack_from("<I", data, 96)[0]
        for i in range(nritems):
            child = struct.unpack_from("<Q", data, HEADER + i * KEY_PTR + 17)[0]
            yield from self.blocks(child, nodes)

    def roots(self) -> dict[int, int]:
        """objectid -> root block of every tree in the root tree."""
        out = {}
        for data, _ in self.blocks(self.root):
            for key, (off, _size) in _leaf_items(data):
                if key[1] == ROOT_ITEM:
                    out[key[0]] = int(struct.unpack_from("<Q", data, HEADER + off + 176)[0])
        return out

    def tree_root(self, objectid: int) -> int:
        """The root block of tree `objectid` (a subvolume, say), from the root tree."""
        for data, _ in self.blocks(self.root):
            for key, (off, _size) in _leaf_items(data):
                if key[0] == objectid and key[1] == ROOT_ITEM:
                    return int(struct.unpack_from("<Q", data, HEADER + off + 176)[0])
        raise _bad(f"no tree {objectid}", self.path)


def _leaf_items(data: bytes) -> Iterator[tuple[tuple[int, int, int], tuple[int, int]]]:
    """((objectid, type, offset), (data offset after the header, size)) of each leaf item."""
    nritems = struct.unpack_from("<I", data, 96)[0]
    for i in range(nritems):
        objectid, type_, offset, doff, size = struct.unpack_from("<QBQII", data, HEADER + i * ITEM)
        yield (objectid, type_, offset), (doff, size)


def _dir_entries(data: bytes, off: int, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset of the type byte, target objectid, name) of each entry of a DIR_ITEM/INDEX."""
    pos, end = HEADER + off, HEADER + off + size
    while pos < end:
        target = struct.unpack_from("<Q", data, pos)[0]
        data_len, name_len = struct.unpack_from("<HH", data, pos + 25)
        yield pos + 29, target, data[pos + 30:pos + 30 + name_len]
        pos += 30 + name_len + data_len


def set_devices(image: Path, devices: dict[bytes, tuple[int, int]],
                tree: int = FIRST_SUBVOL) -> None:
    """Turn the inodes at `devices`' paths (relative, as bytes: b"dev/null") in subvolume
    `tree` into device nodes: path -> (st_mode with the type bits, rdev as os.makedev)."""
    if not devices:
        return
    with Image(image) as img:
        root = img.tree_root(tree)
        # pass 1: names -> inode numbers
        children: dict[tuple[int, bytes], int] = {}
        for data, _ in img.blocks(root):
            for key, (off, size) in _leaf_items(data):
                if key[1] == DIR_INDEX:
                    for _t, target, name in _dir_entries(data, off, size):
                        children[(key[0], name)] = target
        wanted: dict[int, tuple[int, int]] = {}
        for path, spec in devices.items():
            ino = 256  # a subvolume's root directory
            for part in path.split(b"/"):
                found = children.get((ino, part))
                if found is None:
                    raise _bad(f"no entry {path!r} in the image to make a device of", image)
                ino = found
            wanted[ino] = spec
        # pass 2: the inode items and the directory entries naming them
        done: set[int] = set()
        for data, logical in img.blocks(root):
            block = bytearray(data)
            dirty = False
            for key, (off, size) in _leaf_items(data):
                if key[1] == INODE_ITEM and key[0] in wanted:
                    mode, rdev = wanted[key[0]]
                    struct.pack_into("<IQ", block, HEADER + off + 52, mode, rdev)
                    done.add(key[0])
                    dirty = True
                elif key[1] in (DIR_ITEM, DIR_INDEX):
                    for type_at, target, _name in _dir_entries(data, off, size):
                        if target in wanted:
                            block[type_at] = FT[stat.S_IFMT(wanted[target][0])]
                            dirty = True
            if dirty:
                img.write_block(logical, block)
        if done != set(wanted):
            raise _bad("an inode to make a device of was not found", image)


def grow(image: Path, size: int) -> None:
    """Grow the filesystem of `image` (a file of at least `size` bytes) to `size` bytes."""
    with Image(image) as img:
        size -= size % 4096
        changed = False
        for data, logical in list(img.blocks(img.chunk_root)):
            block = bytearray(data)
            for key, (off, _size) in _leaf_items(data):
                if key[1] == DEV_ITEM:
                    old = struct.unpack_from("<Q", data, HEADER + off + 8)[0]
                    if size < old:
                        raise _bad(f"cannot shrink from {old} to {size} bytes", image)
                    struct.pack_into("<Q", block, HEADER + off + 8, size)
                    img.write_block(logical, block)
                    changed = True
        if not changed:
            raise _bad("no device item", image)
        for at in SUPER_OFFSETS:
            sb = bytearray(os.pread(img.fd, SUPER_SIZE, at))
            if len(sb) < SUPER_SIZE or sb[0x40:0x48] != MAGIC:
                continue
            struct.pack_into("<Q", sb, 0x70, size)  # total_bytes
            struct.pack_into("<Q", sb, 0xC9 + 8, size)  # dev_item.total_bytes
            struct.pack_into("<I", sb, 0, crc32c(bytes(sb[32:])))
            os.pwrite(img.fd, sb, at)
        os.fsync(img.fd)


def derived_uuid(seed: str, what: str) -> bytes:
    digest = hashlib.sha256(f"{what}:{seed}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4).bytes


def _times(block: bytearray, at: int, sec: int) -> None:
    struct.pack_into("<QI", block, at, sec, 0)


def pin(image: Path, seed: str, clock: int) -> None:
    """Replace what mkfs.btrfs drew at random or read from the clock (see the module's
    docstring) by values derived from `seed` and `clock`."""
    with Image(image) as img:
        chunk_uuid = derived_uuid(seed, "chunk-tree")
        subvol_uuids: dict[bytes, bytes] = {}
        trees = [("chunk", img.chunk_root), ("root", img.root)]
        trees += [(str(objectid), at) for objectid, at in img.roots().items()]
        seen: set[int] = set()

        def pin_block(name: str, data: bytes, logical: int) -> None:
            block = bytearray(data)
            block[64:80] = chunk_uuid
            if data[100] == 0:
                if name == str(UUID_TREE):
                    block = _uuid_leaf(block, subvol_uuids, img.path)
                else:
                    _pin_items(block, name, seed, clock, subvol_uuids)
            _zero_free_space(block)
            img.write_block(logical, block)

        for name, top in trees:
            for data, logical in list(img.blocks(top, nodes=True)):
                seen.add(logical)
                pin_block(name, data, logical)
        # what mkfs' transactions left in metadata chunks: older copies of tree blocks (the
        # superblock's backup roots may point at them) are pinned the same way, anything
        # else is zeroed
        zero = bytes(img.nodesize)
        for chunk in img.chunks:
            if not chunk.metadata:
                continue
            for logical in range(chunk.logical, chunk.logical + chunk.length, img.nodesize):
                if logical in seen:
                    continue
                data = img.read_block(logical, check=False)
                if data == zero:
                    continue
                if img.valid(data) and struct.unpack_from("<Q", data, 48)[0] == logical:
                    owner = struct.unpack_from("<Q", data, 88)[0]
                    name = {1: "root", 3: "chunk"}.get(owner, str(owner))
                    pin_block(name, data, logical)
                else:
                    for phys in img.physicals(logical):
                        _punch(img.fd, phys, img.nodesize)
        _clear_unmapped(img)
        os.fsync(img.fd)


def _punch(fd: int, offset: int, length: int) -> None:
    """Make [offset, offset+length) of the file read as zeros, a hole where possible."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    punch = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, punch, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        os.pwrite(fd, bytes(length), offset)


def _clear_unmapped(img: Image) -> None:
    """Zero what lies outside every chunk and superblock: mkfs' temporary chunks, dropped
    before it finished, leave tree blocks there."""
    size = os.fstat(img.fd).st_size
    kept = sorted([(p, p + c.length) for c in img.chunks for p in c.physicals]
                  + [(0, SUPER_OFFSETS[0] + SUPER_SIZE)]
                  + [(at, at + SUPER_SIZE) for at in SUPER_OFFSETS[1:]])
    pos = 0
    for start, end in [*kept, (size, size)]:
        if start > pos:
            _punch_data(img.fd, pos, min(start, size))
        pos = max(pos, end)


def _punch_data(fd: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        _punch(fd, data, hole - data)
        pos = hole


def _pin_items(block: bytearray, tree: str, seed: str, clock: int,
               subvol_uuids: dict[bytes, bytes]) -> None:
    data = bytes(block)
    for key, (off, _size) in _leaf_items(data):
        at = HEADER + off
        if key[1] == INODE_ITEM:
            if not _subvolume(tree):  # the trees' own directories, made at mkfs' "now"
                for t in (112, 124, 136, 148):
                    _times(block, at + t, clock)
            else:
                mtime = bytes(block[at + 136:at + 148])
                block[at + 112:at + 124] = mtime  # atime
                block[at + 124:at + 136] = mtime  # ctime
                _times(block, at + 148, 0)  # otime, as mkfs writes it for copied files
        elif key[1] == ROOT_ITEM and tree == "root":
            old = bytes(block[at + 247:at + 263])
            if old != bytes(16):
                new = derived_uuid(seed, f"subvolume:{key[0]}")
                subvol_uuids[old] = new
                block[at + 247:at + 263] = new
            for t in (327, 339, 351, 363):  # ctime, otime, stime, rtime
                if struct.unpack_from("<Q", block, at + t)[0]:
                    _times(block, at + t, clock)
            for t in (112, 124, 136, 148):  # the root item's own inode
                if struct.unpack_from("<Q", block, at + t)[0]:
                    _times(block, at + t, clock)
        elif key[1] == DEV_EXTENT:
            block[at + 32:at + 48] = block[64:80]  # chunk_tree_uuid, as the header's


def _zero_free_space(block: bytearray) -> None:
    """Zero what lies between a block's items and their data (left over from earlier items)."""
    nritems = struct.unpack_from("<I", block, 96)[0]
    if block[100]:  # a node: key pointers, then nothing
        start, end = HEADER + nritems * KEY_PTR, len(block)
    else:
        start = HEADER + nritems * ITEM
        end = min((struct.unpack_from("<I", block, HEADER + i * ITEM + 17)[0] + HEADER
                   for i in range(nritems)), default=len(block))
    if start < end:
        block[start:end] = bytes(end - start)


def _subvolume(tree: str) -> bool:
    """Tree names a subvolume (the top level, 5, or a subvolume id)?"""
    return tree.isdigit() and (int(tree) == 5 or FIRST_SUBVOL <= int(tree) < DATA_RELOC_TREE - 247)


def _uuid_leaf(block: bytearray, subvol_uuids: dict[bytes, bytes], image: Path) -> bytearray:
    """The UUID tree's leaf with its keys (subvolume UUIDs) replaced, items sorted again."""
    data = bytes(block)
    items = []
    for (objectid, type_, offset), (off, size) in _leaf_items(data):
        old = struct.pack("<QQ", objectid, offset)
        if type_ in (UUID_KEY_SUBVOL, UUID_KEY_RECEIVED) and old in subvol_uuids:
            objectid, offset = struct.unpack("<QQ", subvol_uuids[old])
        items.append(((objectid, type_, offset), data[HEADER + off:HEADER + off + size]))
    items.sort(key=lambda kv: kv[0])
    out = bytearray(block)
    end = len(block) - HEADER
    for i, ((objectid, type_, offset), payload) in enumerate(items):
        end -= len(payload)
        struct.pack_into("<QBQII", out, HEADER + i * ITEM, objectid, type_, offset, end,
                         len(payload))
        out[HEADER + end:HEADER + end + len(payload)] = payload
    if HEADER + len(items) * ITEM > HEADER + end:
        raise _bad("the UUID tree leaf does not fit", image)
    return out
