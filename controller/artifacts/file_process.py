"""The second process of an extraction: it creates the small files that the extracting process sends it.

Run as `python -I -S file_process.py ROOT_FD UID GID PARENT_PID` by file_offload.py, with
requests on stdin and the results on stdout. It imports nothing but the
standard library: it is a script, not a module of the package, so that it
starts in a few milliseconds.

Why a process: the extracting process's Python per member (reading headers,
checking names, the writer's bookkeeping) and the system calls that create a
file (open, write, utime, fstat, close) and its digest each take about as long
as tar takes for the whole member. A thread cannot run beside that (the GIL is
handed over at every system call); a process runs on the other core. It also
takes the digests of the files it writes: the extracting process, which reads
and decompresses the archive, has more to do. It checks nothing about the
archive: the extracting process has checked every name, made every directory
and decided every mode before it sends a request.
It writes only below ROOT_FD, through descriptors it opens one component at a
time with O_NOFOLLOW, with O_EXCL|O_NOFOLLOW, as the extracting process does.

Requests, in the order of the archive: REQUEST (kind, directory length, name
length, mode, mtime, data length) then the directory (relative to the root,
empty for the root), the name and the data. A FILE is created with the data;
a LINK is a hardlink to the file named by the data ("directory\\0name"); END
asks for the results. The reply, once: OK then one RESULT per FILE in the
order sent (the SHA-256 in hex, ino, size, mtime_ns, ctime_ns, permission bits); or, at
the first error, FAILED then FAILURE (the index of the request, errno) and
the error's text. A process whose stdin ends before END exits without a
reply: the extracting process is gone.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import stat
import struct
import sys

REQUEST = struct.Struct("<BHHIdQ")
RESULT = struct.Struct("<64sQQqqI")
FAILURE = struct.Struct("<Qi")
END, FILE, LINK = 0, 1, 2
OK, FAILED = b"K", b"E"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_DIR_FDS = 64
READ = 1024 * 1024
PR_SET_PDEATHSIG = 1  # prctl(2)
# mallopt(3): M_MMAP_THRESHOLD, M_TRIM_THRESHOLD and the values keep_freed_memory gives them
MALLOPT = ((-3, 4 * 1024 * 1024), (-1, 16 * 1024 * 1024))


def keep_freed_memory(libc: object) -> None:
    """Have glibc's malloc keep the megabyte buffers an extraction frees, for the next ones (`libc`: ctypes.CDLL).

    By default it hands a freed buffer of a megabyte back to the kernel (munmap, or a trimmed heap) and the next
    one faults its pages in again, zeroed: about 100,000 page faults and a sixth of the CPU time of extracting a
    250 MB file. With these settings buffers below 4 MiB come from the heap and up to 16 MiB of free heap is
    kept. Nothing happens where the C library has no mallopt (not glibc).
    """
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        for param, value in MALLOPT:
            mallopt(param, value)


class Failed(Exception):
    def __init__(self, index: int, error: OSError) -> None:
        super().__init__(index, error)
        self.index, self.error = index, error


class Directories:
    """Descriptors of directories below `root` (a descriptor), each opened relative to its parent with O_NOFOLLOW;
    the MAX_DIR_FDS used last are kept open (member_writer.Writer uses this class too). A lookup may close the
    descriptor an earlier one returned: use one at a time, or dup it."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._fds: collections.OrderedDict[str, int] = collections.OrderedDict()

    def fd(self, name: str) -> int:
        """A descriptor of the directory `name` (relative to the root, "" for the root)."""
        if not name:
            return self.root
        fd = self._fds.get(name)
        if fd is not None:
            self._fds.move_to_end(name)
            return fd
        missing = [name]  # up to the nearest directory with a descriptor (a loop: trees can be thousands deep)
        while (parent := missing[-1].rpartition("/")[0]) and parent not in self._fds:
            missing.append(parent)
        fd = self._fds[parent] if parent else self.root
        for below in reversed(missing):
            fd = self._fds[below] = os.open(below.rpartition("/")[2], DIR_FLAGS, dir_fd=fd)
            if len(self._fds) > MAX_DIR_FDS:
                os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class Files:
    """Creates files below the directory `root` (a descriptor) and keeps their results."""

    def __init__(self, root: int, owner: tuple[int, int] | None) -> None:
        self.dirs = Directories(root)
        self.owner = owner
        self.results: list[bytes] = []
        self._last: tuple[bytes, int] = (b"", root)  # the directory of the last file, and its descriptor

    def _dir_fd(self, directory: bytes) -> int:
        if directory != self._last[0]:  # files come directory by directory
            self._last = directory, self.dirs.fd(os.fsdecode(directory))
        return self._last[1]

    def file(self, directory: bytes, name: bytes, mode: int, mtime: float, data: memoryview) -> None:
        fd = os.open(name, FILE_FLAGS, mode, dir_fd=self._dir_fd(directory))
        try:
            write_all(fd, data)
            st = settle(fd, self.owner, mtime, mode)
        finally:
            os.close(fd)
        digest = hashlib.sha256(data).hexdigest().encode()
        self.results.append(RESULT.pack(digest, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, stat.S_IMODE(st.st_mode)))

    def link(self, directory: bytes, name: bytes, target: bytes) -> None:
        above, _, base = target.partition(b"\0")
        source = os.dup(self.dirs.fd(os.fsdecode(above)))  # the next lookup may close the cached descriptor
        self._last = b"", self.dirs.root  # and this one may have closed the last directory's
        try:
            os.link(base, name, src_dir_fd=source, dst_dir_fd=self._dir_fd(directory), follow_symlinks=False)
        finally:
            os.close(source)


def write_all(fd: int, data: bytes | memoryview) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a signal, or a full disk on the next write
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view):]


def settle(fd: int, owner: tuple[int, int] | None, mtime: float, mode: int) -> os.stat_result:
    """Give the file just written its owner, mtime and mode; its stat as left."""
    if owner is not None:
        os.fchown(fd, *owner)
    os.utime(fd, (mtime, mtime))
    st = os.fstat(fd)
    if st.st_mode & 0o7777 != mode:  # the umask (or a default ACL) took bits away
        os.fchmod(fd, mode)
        st = os.fstat(fd)
    return st


def serve(requests: int, files: Files) -> bool:
    """Carry out the requests read from `requests` until END (True) or the end of the stream (False)."""
    buf, pos, index = b"", 0, 0
    view = memoryview(buf)
    while True:
        end = pos + REQUEST.size
        if end <= len(buf):
            kind, dir_size, name_size, mode, mtime, size = REQUEST.unpack_from(buf, pos)
            name_at = end + dir_size
            data_at = name_at + name_size
            end = data_at + size
        if end > len(buf):  # the request is not all there yet
            chunk = os.read(requests, READ)
            if not chunk:
                return False
            buf, pos = buf[pos:] + chunk, 0
            view = memoryview(buf)
            continue
        directory, name = buf[pos + REQUEST.size:name_at], buf[name_at:data_at]
        pos = end
        if kind == END:
            return True
        try:
            if kind == FILE:
                files.file(directory, name, mode, mtime, view[data_at:end])
            else:
                files.link(directory, name, buf[data_at:end])
        except OSError as exc:
            raise Failed(index, exc) from exc
        index += 1


def main(argv: list[str]) -> int:
    root, uid, gid, parent = (int(arg) for arg in argv[1:5])
    import ctypes  # here: the extracting process imports this module for its constants and keep_freed_memory

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C is the extracting process's to handle: it stops this one
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    keep_freed_memory(libc)
    if os.getppid() != parent:  # it died before that took effect
        return 1
    files = Files(root, None if uid < 0 else (uid, gid))
    requests, replies = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        if not serve(requests, files):
            return 1
    except Failed as exc:
        text = (exc.error.strerror or str(exc.error)).encode("utf-8", "replace")
        write_all(replies, FAILED + FAILURE.pack(exc.index, exc.error.errno or 0) + text)
        return 1
    write_all(replies, OK + b"".join(files.results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
