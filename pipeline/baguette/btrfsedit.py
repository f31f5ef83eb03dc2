"""In-place edits of an unmounted btrfs image that mkfs.btrfs cannot make: device numbers, and
growing the filesystem to its file.

Technical details. `mkfs.btrfs --rootdir` writes every device node with rdev 0 (btrfs-progs
mkfs/rootdir.c, `stat_to_inode_item`, up to 6.17 at least), and a user cannot make device
nodes anyway, so the packer stages each one as an empty regular file and this module turns
its inode into the device: the inode item's mode and rdev, and the file type byte of its
directory entries (DIR_ITEM, DIR_INDEX). Growing (btrfs-progs 6.17's `filesystem resize
--offline` does the same) sets the device item's and the superblock's total_bytes. Each edit
overwrites fixed-size fields of existing items, so no item moves and no tree changes shape;
the edited tree blocks get a new crc32c and are written to every copy (DUP metadata). The
image is `btrfs check`ed afterwards by the pack stage (baguette/check.py).

Only what mkfs.btrfs writes is supported: one device, crc32c checksums, no log tree.
"""

from __future__ import annotations

import os
import stat
import struct
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
ROOT_ITEM, DEV_ITEM, CHUNK_ITEM = 132, 216, 228
ROOT_TREE_OBJECTID, CHUNK_TREE_OBJECTID, FIRST_SUBVOL = 1, 3, 256
FT = {stat.S_IFCHR: 3, stat.S_IFBLK: 4}  # btrfs file types of device nodes


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _bad(what: str, image: Path) -> PipelineError:
    return PipelineError(f"{image}: {what}",
                         hint="this btrfs layout is not what mkfs.btrfs --rootdir writes; "
                         "report it with your btrfs-progs version")


@dataclass(frozen=True)
class Chunk:
    logical: int
    length: int
    physicals: tuple[int, ...]  # one per stripe (DUP: two)


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
        num_stripes = struct.unpack_from("<H", buf, off + 44)[0]
        physicals = tuple(struct.unpack_from("<Q", buf, off + 48 + 32 * i + 8)[0]
                          for i in range(num_stripes))
        return Chunk(logical, length, physicals), 48 + 32 * num_stripes

    def physicals(self, logical: int) -> tuple[int, ...]:
        for c in self.chunks:
            if c.logical <= logical < c.logical + c.length:
                return tuple(p + logical - c.logical for p in c.physicals)
        raise _bad(f"no chunk maps logical address {logical}", self.path)

    def read_block(self, logical: int) -> bytes:
        data = os.pread(self.fd, self.nodesize, self.physicals(logical)[0])
        if len(data) != self.nodesize or struct.unpack_from("<I", data)[0] != crc32c(
                data[32:]):
            raise _bad(f"tree block {logical} has a bad checksum", self.path)
        return data

    def write_block(self, logical: int, data: bytearray) -> None:
        struct.pack_into("<I", data, 0, crc32c(bytes(data[32:])))
        for phys in self.physicals(logical):
            os.pwrite(self.fd, data, phys)

    def blocks(self, logical: int) -> Iterator[tuple[bytes, int]]:
        """Every leaf of the tree rooted at `logical`, in key order: (block, its logical)."""
        data = self.read_block(logical)
        level = data[100]
        if level == 0:
            yield data, logical
            return
        nritems = struct.unpack_from("<I", data, 96)[0]
        for i in range(nritems):
            child = struct.unpack_from("<Q", data, HEADER + i * KEY_PTR + 17)[0]
            yield from self.blocks(child)

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
