"""Per-message cost of sign+encrypt and decrypt+verify: securemail vs stock PGPy vs gpg vs the floor.

Run from the repository root::

    python -m bench.crypto                      # full default run (~1-2 min on 2 cores)
    python -m bench.crypto --sizes 4K,1M --repeat 5 --json /tmp/r.json
    python -m bench.crypto --profile            # cProfile of securemail only (see --help)

Four implementations do the same job on the same keys (sender A signs, recipient
B decrypts; Ed25519+Cv25519 keys, then RSA-3072 keys) and the same random data:

securemail  message.encrypt(armor=True) / message.decrypt, secret keys unlocked once
pgpy        stock PGPy used the obvious way: PGPMessage.new, key.sign, pubkey.encrypt,
            str(msg); PGPMessage.from_blob, key.decrypt, pubkey.verify
gpg         one gpg process per message (temporary GNUPGHOME holding both secret keys)
floor       the same primitives straight through `cryptography` with no OpenPGP
            framing: SHA-512 + Ed25519 / RSA-3072 PKCS#1 v1.5 signature, AES-256-CFB
            + SHA-1 MDC, X25519 + AES key wrap / RSA-3072 PKCS#1 v1.5 encryption of
            the session key, base64 without line breaks -- the cost of the math, a
            lower bound

Times are medians per message in milliseconds, wall-clock and CPU (for gpg: the gpg
process plus what gpg-agent spent meanwhile). Each implementation
decrypts what it encrypted in the same round; every output is checked (data equal,
signature good) and a wrong answer is reported instead of a time. Rounds interleave
the implementations so that drift in machine speed hits them alike.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
from dataclasses import dataclass, field
from typing import Callable

warnings.simplefilter("ignore")

from cryptography.hazmat.primitives import hashes, keywrap  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from securemail.crypto import keys, message, openpgp  # noqa: E402

ALGOS = ("ed25519", "rsa3072")
ALGO_LABEL = {"ed25519": "Ed25519/Cv25519", "rsa3072": "RSA-3072"}
IMPLS = ("securemail", "pgpy", "gpg", "floor")
OPS = ("encrypt+sign", "decrypt+verify")
DEFAULT_SIZES = "4K,64K,1M"
GPG_BASE = ["gpg", "--batch", "--yes", "--trust-model", "always", "--pinentry-mode", "loopback",
            "--passphrase", ""]


def parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(float(t.rstrip("KMG")) * mult)


def size_label(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def default_repeats(impl: str, algo: str, size: int) -> int:
    """Runs per cell: enough for a stable median, small enough for ~1-2 min total."""
    if impl == "pgpy":  # ~0.5 s (RSA, any size) to ~7 s (1 MiB) per round
        if size <= 8 << 10:
            return 9 if algo == "ed25519" else 5
        return 7 if size <= 128 << 10 and algo == "ed25519" else 5 if size <= 128 << 10 else 3
    if impl == "gpg":   # ~30-100 ms per round
        return 21 if size <= 8 << 10 else 15 if size <= 128 << 10 else 11
    return 41 if size <= 8 << 10 else 31 if size <= 128 << 10 else 15


# --- keys -------------------------------------------------------------------------
@dataclass
class Keyset:
    algo: str
    a_armored: bytes          # sender's secret key (signs)
    b_armored: bytes          # recipient's secret key (decrypts)
    a_pub_armored: bytes
    b_pub_armored: bytes
    setup_ms: dict = field(default_factory=dict)


def make_keys(algo: str) -> Keyset:
    t0 = time.perf_counter()
    pa = openpgp.generate(f"Alice Sender <alice-{algo}@bench.example.gov>", algo, None, None)
    pb = openpgp.generate(f"Bob Recipient <bob-{algo}@bench.example.gov>", algo, None, None)
    gen = (time.perf_counter() - t0) * 1e3 / 2
    a, b = keys.Key(pa), keys.Key(pb)
    ks = Keyset(algo, a.armored(), b.armored(), a.public().armored(), b.public().armored())
    ks.setup_ms["generate_key"] = round(gen, 2)
    # What a gateway pays to load a certificate (parse + validate self-signatures).
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        keys.load_key(ks.b_pub_armored)
        samples.append((time.perf_counter() - t) * 1e3)
    ks.setup_ms["load_public_key"] = round(statistics.median(samples), 3)
    return ks


# --- implementations --------------------------------------------------------------
class Impl:
    name = ""
    last_error = ""

    def encrypt(self, data: bytes) -> bytes:
        raise NotImplementedError

    def decrypt(self, ct: bytes) -> tuple[bytes, bool]:
        """(plaintext, signature verified good)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def timed(self, fn, arg):
        """(result, wall ms, CPU ms) of one call."""
        gc.collect()
        c, t = time.process_time(), time.perf_counter()
        out = fn(arg)
        return out, (time.perf_counter() - t) * 1e3, (time.process_time() - c) * 1e3


class SecureMail(Impl):
    name = "securemail"

    def __init__(self, ks: Keyset) -> None:
        self.a = keys.load_key(ks.a_armored)
        self.b = keys.load_key(ks.b_armored)
        self.a_pub = keys.load_key(ks.a_pub_armored)
        self.b_pub = keys.load_key(ks.b_pub_armored)
        self._certs = {kid: self.a_pub for kid in self.a_pub.keyids}
        self._fprs = {self.a_pub.fingerprint: self.a_pub}
        self._stack = contextlib.ExitStack()
        # Unlocked once for the whole run, as a gateway process would hold its keys.
        self._stack.enter_context(self.a.pgp.unlocked(None))
        self._stack.enter_context(self.b.pgp.unlocked(None))
        self.to = [(self.b_pub, f"bob-{ks.algo}@bench.example.gov")]

    def lookup(self, keyid: str, fpr: str | None):
        return self._certs.get(keyid) or (self._fprs.get(fpr) if fpr else None)

    def encrypt(self, data: bytes) -> bytes:
        return message.encrypt(data, self.to, signer=self.a, armor=True)

    def decrypt(self, ct: bytes) -> tuple[bytes, bool]:
        d = message.decrypt(ct, [self.b], self.lookup)
        return d.data, bool(d.signatures) and all(s.status == "valid" for s in d.signatures)

    def close(self) -> None:
        self._stack.close()


class StockPGPy(Impl):
    """PGPy 0.6 the way its README shows it (defaults: ZIP compression, pure-Python armor)."""
    name = "pgpy"

    def __init__(self, ks: Keyset) -> None:
        import pgpy
        self.pgpy = pgpy
        self.a, _ = pgpy.PGPKey.from_blob(ks.a_armored.decode())
        self.b, _ = pgpy.PGPKey.from_blob(ks.b_armored.decode())
        self.a_pub, _ = pgpy.PGPKey.from_blob(ks.a_pub_armored.decode())
        self.b_pub, _ = pgpy.PGPKey.from_blob(ks.b_pub_armored.decode())

    def encrypt(self, data: bytes) -> bytes:
        msg = self.pgpy.PGPMessage.new(data)
        msg |= self.a.sign(msg)
        return str(self.b_pub.encrypt(msg)).encode()

    def decrypt(self, ct: bytes) -> tuple[bytes, bool]:
        msg = self.pgpy.PGPMessage.from_blob(ct.decode())
        dec = self.b.decrypt(msg)
        ok = bool(self.a_pub.verify(dec))
        out = dec.message
        return (out.encode() if isinstance(out, str) else bytes(out)), ok


class Gpg(Impl):
    """One gpg process per message; gpg-agent (started by the warm-up) holds the secret keys."""
    name = "gpg"

    def __init__(self, ks: Keyset) -> None:
        self.home = tempfile.mkdtemp(prefix="smbench-")
        os.chmod(self.home, 0o700)
        self.env = dict(os.environ, GNUPGHOME=self.home)
        r = subprocess.run(["gpg", "--batch", "--import"], input=ks.a_armored + ks.b_armored,
                           env=self.env, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError("gpg --import failed: " + r.stderr.decode(errors="replace")[-500:])
        self.a_fpr = keys.load_key(ks.a_pub_armored).fingerprint
        self.b_fpr = keys.load_key(ks.b_pub_armored).fingerprint
        self.enc_cmd = GPG_BASE + ["-e", "-s", "-a", "-r", self.b_fpr, "-u", self.a_fpr]
        self.dec_cmd = GPG_BASE + ["--status-fd", "2", "-d"]
        # Start the agent now and remember its pid: its CPU time is part of gpg's cost.
        r = subprocess.run(["gpg-connect-agent", "getinfo pid", "/bye"], env=self.env,
                           capture_output=True, text=True)
        pid = next((ln[2:].strip() for ln in r.stdout.splitlines() if ln.startswith("D ")), "")
        self.agent_stat = f"/proc/{pid}/schedstat" if pid.isdigit() else None

    def _agent_cpu_ns(self) -> int | None:
        if self.agent_stat is None:
            return None
        try:
            with open(self.agent_stat) as fh:
                return int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def timed(self, fn, arg):
        """CPU = the gpg process (RUSAGE_CHILDREN delta) + what gpg-agent spent meanwhile."""
        gc.collect()
        ru0, a0 = resource.getrusage(resource.RUSAGE_CHILDREN), self._agent_cpu_ns()
        t = time.perf_counter()
        out = fn(arg)
        wall = (time.perf_counter() - t) * 1e3
        ru1, a1 = resource.getrusage(resource.RUSAGE_CHILDREN), self._agent_cpu_ns()
        cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1e3
        if a0 is None or a1 is None or a1 < a0:
            return out, wall, None  # the agent went away (restarted): no CPU figure this round
        return out, wall, cpu + (a1 - a0) / 1e6

    def encrypt(self, data: bytes) -> bytes:
        r = subprocess.run(self.enc_cmd, input=data, env=self.env, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"gpg -e -s exit {r.returncode}: " + r.stderr.decode(errors="replace")[-300:])
        return r.stdout

    def decrypt(self, ct: bytes) -> tuple[bytes, bool]:
        r = subprocess.run(self.dec_cmd, input=ct, env=self.env, capture_output=True)
        ok = r.returncode == 0 and self.good(r.stderr)
        if not ok:
            self.last_error = f"gpg -d exit {r.returncode}: " + "; ".join(
                ln for ln in r.stderr.decode(errors="replace").splitlines()
                if "GOODSIG" not in ln and "KEY_CONSIDERED" not in ln)[-400:]
        return r.stdout, ok

    def good(self, status: bytes) -> bool:
        return b"[GNUPG:] GOODSIG " in status and f"VALIDSIG {self.a_fpr}".encode() in status

    def decrypt_status(self, ct: bytes) -> tuple[int, bytes, bytes]:
        r = subprocess.run(self.dec_cmd, input=ct, env=self.env, capture_output=True)
        return r.returncode, r.stdout, r.stderr

    def list_packets(self, ct: bytes) -> str:
        r = subprocess.run(["gpg", "--batch", "--list-packets"], input=ct, env=self.env,
                           capture_output=True)
        return r.stdout.decode(errors="replace")

    def maxrss(self, cmd: list[str], data: bytes) -> int | None:
        """Peak RSS (bytes) of one gpg process (gpg-agent not counted), or None.

        Measured by GNU time: a child forked straight from this Python process would
        report this process's RSS as its own peak (Linux carries maxrss across fork+exec).
        """
        if not os.access("/usr/bin/time", os.X_OK):
            return None
        with tempfile.NamedTemporaryFile() as rep:
            r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rep.name, *cmd], input=data,
                               env=self.env, capture_output=True)
            if r.returncode != 0:
                return None
            return int(open(rep.name).read().split()[-1]) * 1024

    def close(self) -> None:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=self.env, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


class Floor(Impl):
    """The primitives alone; layout: [ephemeral pub | wrapped key] or [RSA ESK], then CFB data."""
    name = "floor"

    def __init__(self, ks: Keyset) -> None:
        self.algo = ks.algo
        if ks.algo == "ed25519":
            self.sign_key = ed25519.Ed25519PrivateKey.generate()
            self.enc_key = x25519.X25519PrivateKey.generate()
            self.esk_len, self.sig_len = 32 + 48, 64  # wrap adds 8 bytes
        else:
            self.sign_key = rsa.generate_private_key(65537, 3072)
            self.enc_key = rsa.generate_private_key(65537, 3072)
            self.esk_len, self.sig_len = 384, 384
        self.verify_key = self.sign_key.public_key()
        self.enc_pub = self.enc_key.public_key()
        self.kdf_param = os.urandom(56)  # stands for the RFC 6637 KDF parameters

    def _sign(self, data: bytes) -> bytes:
        h = hashlib.sha512(data)
        h.update(b"\x04\x00\x16\x0a\x00\x00\x00\x00\x04\xff\x00\x00\x00\x06")  # a v4 trailer
        digest = h.digest()
        if self.algo == "ed25519":
            return self.sign_key.sign(digest)
        return self.sign_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA512()))

    def _verify(self, data: bytes, sig: bytes) -> bool:
        h = hashlib.sha512(data)
        h.update(b"\x04\x00\x16\x0a\x00\x00\x00\x00\x04\xff\x00\x00\x00\x06")
        try:
            if self.algo == "ed25519":
                self.verify_key.verify(sig, h.digest())
            else:
                self.verify_key.verify(sig, h.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA512()))
            return True
        except Exception:  # noqa: BLE001
            return False

    def _kek(self, shared: bytes) -> bytes:
        return hashlib.sha256(b"\x00\x00\x00\x01" + shared + self.kdf_param).digest()

    def encrypt(self, data: bytes) -> bytes:
        sig = self._sign(data)
        session = os.urandom(32)
        prefix = os.urandom(16)
        prefix += prefix[-2:]
        mdc = hashlib.sha1(prefix)
        mdc.update(data)
        mdc.update(sig)
        mdc.update(b"\xd3\x14")
        enc = Cipher(algorithms.AES(session), modes.CFB(b"\x00" * 16)).encryptor()
        body = b"".join((enc.update(prefix), enc.update(data), enc.update(sig),
                         enc.update(b"\xd3\x14" + mdc.digest()), enc.finalize()))
        keyblob = session + b"\x09\x00\x00" + b"\x05" * 5  # + algo, checksum, padding to 40
        if self.algo == "ed25519":
            eph = x25519.X25519PrivateKey.generate()
            wrapped = keywrap.aes_key_wrap(self._kek(eph.exchange(self.enc_pub)), keyblob)
            esk = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) + wrapped
        else:
            esk = self.enc_pub.encrypt(keyblob[:35], padding.PKCS1v15())
        return base64.b64encode(esk + body)  # no line breaks: wrapping is framing, not math

    def decrypt(self, ct: bytes) -> tuple[bytes, bool]:
        raw = base64.b64decode(ct, validate=True)
        esk, body = raw[:self.esk_len], raw[self.esk_len:]
        if self.algo == "ed25519":
            eph = x25519.X25519PublicKey.from_public_bytes(esk[:32])
            keyblob = keywrap.aes_key_unwrap(self._kek(self.enc_key.exchange(eph)), esk[32:])
        else:
            keyblob = self.enc_key.decrypt(esk, padding.PKCS1v15())
        dec = Cipher(algorithms.AES(keyblob[:32]), modes.CFB(b"\x00" * 16)).decryptor()
        plain = dec.update(body) + dec.finalize()
        mdc_ok = hashlib.sha1(plain[:-20]).digest() == plain[-20:]
        data = plain[18:-22 - self.sig_len]
        sig = plain[-22 - self.sig_len:-22]
        return data, mdc_ok and self._verify(data, sig)


FACTORIES: dict[str, Callable[[Keyset], Impl]] = {
    "securemail": SecureMail, "pgpy": StockPGPy, "gpg": Gpg, "floor": Floor}


# --- measuring --------------------------------------------------------------------
@dataclass
class Cell:
    algo: str
    size: int
    impl: str
    op: str
    samples: list = field(default_factory=list)       # wall ms
    cpu_samples: list = field(default_factory=list)   # CPU ms
    out_bytes: int | None = None
    error: str | None = None
    failures: list = field(default_factory=list)      # rounds that failed (not timed)
    peak_heap: int | None = None      # tracemalloc peak during one op (in-process impls)
    peak_rss: int | None = None       # peak RSS of the gpg process

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples and not self.error else None

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_samples) if self.cpu_samples and not self.error else None

    def as_json(self) -> dict:
        return {"algo": self.algo, "size": self.size, "impl": self.impl, "op": self.op,
                "n": len(self.samples), "median_ms": _r(self.median),
                "min_ms": _r(min(self.samples)) if self.samples else None,
                "max_ms": _r(max(self.samples)) if self.samples else None,
                "samples_ms": [_r(s) for s in self.samples],
                "cpu_median_ms": _r(self.cpu_median), "cpu_samples_ms": [_r(s) for s in self.cpu_samples],
                "out_bytes": self.out_bytes,
                "peak_heap_bytes": self.peak_heap, "peak_rss_bytes": self.peak_rss,
                "failures": self.failures, "error": self.error}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def heap_peak(fn, arg) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn(arg)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check(data: bytes, plain: bytes, ok: bool, impl: Impl) -> str | None:
    if plain != data:
        return "decrypted data differs" + (f" ({impl.last_error})" if impl.last_error else "")
    if not ok:
        return "signature not verified" + (f" ({impl.last_error})" if impl.last_error else "")
    return None


def bench_cell(impls: dict[str, Impl], algo: str, size: int, repeat: int | None,
               mem: str, warmed: set, log) -> list[Cell]:
    """Time every implementation on one (keys, size); rounds interleave the implementations.

    The first cell an implementation runs starts with an untimed warm-up round (imports,
    gpg-agent start, caches). A failed round is recorded, not timed; more than a fifth
    of the rounds failing marks the whole cell as FAIL.
    """
    data = os.urandom(size)
    cells = {(n, op): Cell(algo, size, n, op) for n in impls for op in OPS}
    reps = {n: repeat or default_repeats(n, algo, size) for n in impls}
    live = dict(impls)
    for name, impl in list(live.items()):
        if name in warmed:
            continue
        try:
            impl.last_error = ""
            plain, ok = impl.decrypt(impl.encrypt(data))
            why = _check(data, plain, ok, impl)
            if why:
                raise RuntimeError(why)
            warmed.add(name)
        except Exception as e:  # noqa: BLE001
            for op in OPS:
                cells[name, op].error = f"warm-up: {type(e).__name__}: {e}"[:400]
            del live[name]
            log(f"  {name}: FAILED {e}")
    for i in range(max(reps.values(), default=0)):
        for name, impl in live.items():
            if i >= reps[name]:
                continue
            impl.last_error = ""
            try:
                ct, t_enc, c_enc = impl.timed(impl.encrypt, data)
                (plain, ok), t_dec, c_dec = impl.timed(impl.decrypt, ct)
                why = _check(data, plain, ok, impl)
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {e}"
            if why:
                cells[name, OPS[0]].failures.append(f"round {i}: {why}"[:400])
                log(f"  {name} {size_label(size)} round {i} failed: {why[:200]}")
                continue
            cells[name, OPS[0]].out_bytes = len(ct)
            for op, t, c in ((OPS[0], t_enc, c_enc), (OPS[1], t_dec, c_dec)):
                cells[name, op].samples.append(t)
                if c is not None:
                    cells[name, op].cpu_samples.append(c)
    for name in live:
        fails = cells[name, OPS[0]].failures
        cells[name, OPS[1]].failures = fails
        if len(fails) * 5 > reps[name] or not cells[name, OPS[0]].samples:
            for op in OPS:
                cells[name, op].error = f"{len(fails)} of {reps[name]} rounds failed; first: {fails[0]}"
    if mem != "none":
        for name, impl in live.items():
            if name == "pgpy" and size > 64 << 10 and mem != "all":
                continue  # tracemalloc makes PGPy's per-byte Python loops ~20x slower
            try:
                ct = impl.encrypt(data)
                if isinstance(impl, Gpg):
                    cells[name, OPS[0]].peak_rss = impl.maxrss(impl.enc_cmd, data)
                    cells[name, OPS[1]].peak_rss = impl.maxrss(impl.dec_cmd, ct)
                else:
                    cells[name, OPS[0]].peak_heap = heap_peak(impl.encrypt, data)
                    cells[name, OPS[1]].peak_heap = heap_peak(impl.decrypt, ct)
            except Exception as e:  # noqa: BLE001
                log(f"  {name}: memory pass failed: {e}")
    return list(cells.values())


def interop_checks(algo: str, impls: dict[str, Impl]) -> list[dict]:
    """Not timed: can each implementation read the others' messages (data + signature)?"""
    out = []
    data = os.urandom(4096)
    sm, pg, gp = impls.get("securemail"), impls.get("pgpy"), impls.get("gpg")

    def check(src: Impl, dst: Impl) -> None:
        row = {"algo": algo, "from": src.name, "to": dst.name, "data_ok": False, "signature_ok": False,
               "detail": ""}
        try:
            ct = src.encrypt(data)
            if isinstance(dst, Gpg):
                rc, plain, status = dst.decrypt_status(ct)
                row["data_ok"] = plain == data
                row["signature_ok"] = rc == 0 and dst.good(status)
                if not row["signature_ok"]:
                    row["detail"] = "; ".join(
                        ln.strip() for ln in status.decode(errors="replace").splitlines()
                        if ln.startswith("gpg: ") and ("WARNING" in ln or "Can't" in ln or "BAD" in ln)
                        or "ERRSIG" in ln or "BADSIG" in ln)[:300]
            else:
                plain, ok = dst.decrypt(ct)
                row["data_ok"], row["signature_ok"] = plain == data, ok
        except Exception as e:  # noqa: BLE001
            row["detail"] = f"{type(e).__name__}: {e}"[:300]
        out.append(row)

    for src, dst in ((sm, gp), (gp, sm), (sm, pg), (pg, sm)):
        if src is not None and dst is not None:
            check(src, dst)
    return out


# --- report -----------------------------------------------------------------------
def _fmt_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 1000 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _cellstr(c: Cell, v: float | None) -> str:
    if c.error:
        return "FAIL"
    return _fmt_ms(v) + ("*" if c.failures else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def render(cells: list[Cell], impls: list[str], sizes: list[int], algos: list[str],
           metric: str = "wall") -> tuple[str, list[dict]]:
    by = {(c.algo, c.size, c.impl, c.op): c for c in cells}
    pick = (lambda c: c.median) if metric == "wall" else (lambda c: c.cpu_median)
    head = (f"{'keys':<16}{'size':>8}  {'operation':<15}"
            + "".join(f"{n:>11}" for n in impls)
            + f"{'sm/gpg':>9}{'sm/floor':>10}{'PGPy/sm':>9}")
    what = ("WALL-CLOCK" if metric == "wall" else
            "CPU (gpg: gpg process + gpg-agent)")
    lines = [f"{what} median ms per message (lower is better); sm/gpg < 1: securemail faster",
             head, "-" * len(head)]
    ratios = []
    misses = []
    for algo in algos:
        for size in sizes:
            for op in OPS:
                med = {n: pick(by[algo, size, n, op]) if (algo, size, n, op) in by else None for n in impls}
                r = {"metric": metric, "algo": algo, "size": size, "op": op,
                     "securemail_over_gpg": _ratio(med.get("securemail"), med.get("gpg")),
                     "securemail_over_floor": _ratio(med.get("securemail"), med.get("floor")),
                     "pgpy_over_securemail": _ratio(med.get("pgpy"), med.get("securemail"))}
                ratios.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
                f = (lambda v: f"{v:.2f}x" if v is not None else "-")
                cols = "".join(f"{_cellstr(by[algo, size, n, op], med[n]):>11}" for n in impls)
                lines.append(f"{ALGO_LABEL[algo]:<16}{size_label(size):>8}  {op:<15}{cols}"
                             f"{f(r['securemail_over_gpg']):>9}{f(r['securemail_over_floor']):>10}"
                             f"{f(r['pgpy_over_securemail']):>9}")
                if r["securemail_over_gpg"] is not None and r["securemail_over_gpg"] >= 1:
                    misses.append(f"{ALGO_LABEL[algo]} {size_label(size)} {op}")
        lines.append("")
    if any(n == "gpg" for n in impls) and any(n == "securemail" for n in impls):
        lines.append(f"target 'securemail faster than gpg per message everywhere' ({metric}): "
                     + ("MET" if not misses else "MISSED at " + ", ".join(misses)))
    for c in (cells if metric == "wall" else []):
        if c.op != OPS[0]:
            continue
        if c.error:
            lines.append(f"FAIL {c.impl} {ALGO_LABEL[c.algo]} {size_label(c.size)}: {c.error}")
        elif c.failures:
            lines.append(f"* {c.impl} {ALGO_LABEL[c.algo]} {size_label(c.size)}: {len(c.failures)} round(s) "
                         f"failed and were left out; first: {c.failures[0]}")
    return "\n".join(lines), ratios


def render_mem(cells: list[Cell], impls: list[str], sizes: list[int], algos: list[str]) -> str:
    by = {(c.algo, c.size, c.impl, c.op): c for c in cells}
    head = f"{'keys':<16}{'size':>8}  {'operation':<15}" + "".join(f"{n:>11}" for n in impls)
    lines = ["peak memory per message, MiB: in-process = Python heap peak during the call "
             "(tracemalloc);", "gpg = peak RSS of the gpg process (gpg-agent not counted)", head,
             "-" * len(head)]
    for algo in algos:
        for size in sizes:
            for op in OPS:
                vals = []
                for n in impls:
                    c = by.get((algo, size, n, op))
                    v = None if c is None else (c.peak_heap if c.peak_heap is not None else c.peak_rss)
                    vals.append("-" if v is None else f"{v / (1 << 20):.2f}")
                lines.append(f"{ALGO_LABEL[algo]:<16}{size_label(size):>8}  {op:<15}"
                             + "".join(f"{v:>11}" for v in vals))
    return "\n".join(lines)


def versions() -> dict:
    from importlib.metadata import version
    out = {"python": sys.version.split()[0], "platform": platform.platform(),
           "cpus": os.cpu_count(), "pgpy": version("PGPy"), "cryptography": version("cryptography"),
           "anycrc": version("anycrc")}
    if shutil.which("gpg"):
        out["gpg"] = subprocess.run(["gpg", "--version"], capture_output=True,
                                    text=True).stdout.splitlines()[0]
    return out


# --- profiling ----------------------------------------------------------------------
def profile(algos: list[str], sizes: list[int], repeat: int | None, profiler: str, top: int,
            outdir: str | None) -> None:
    """Profile securemail encrypt+sign and decrypt+verify, one report per (keys, size, op)."""
    for algo in algos:
        ks = make_keys(algo)
        sm = SecureMail(ks)
        try:
            for size in sizes:
                data = os.urandom(size)
                n = repeat or (40 if size <= 128 << 10 else 8)
                ct = sm.encrypt(data)
                assert sm.decrypt(ct) == (data, True)
                for op, fn, arg in (("encrypt+sign", sm.encrypt, data), ("decrypt+verify", sm.decrypt, ct)):
                    title = f"{ALGO_LABEL[algo]} {size_label(size)} {op}, {n} calls"
                    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))
                    stem = f"{algo}-{size}-{op.replace('+', '_')}"
                    if profiler == "pyinstrument":
                        from pyinstrument import Profiler
                        p = Profiler(interval=0.0002)
                        p.start()
                        for _ in range(n):
                            fn(arg)
                        p.stop()
                        print(p.output_text(unicode=False, color=False, show_all=False))
                        if outdir:
                            os.makedirs(outdir, exist_ok=True)
                            with open(os.path.join(outdir, stem + ".html"), "w") as fh:
                                fh.write(p.output_html())
                    else:
                        import cProfile
                        import pstats
                        pr = cProfile.Profile()
                        pr.enable()
                        for _ in range(n):
                            fn(arg)
                        pr.disable()
                        _print_pstats(pstats.Stats(pr), n, top)
                        if outdir:
                            os.makedirs(outdir, exist_ok=True)
                            pr.dump_stats(os.path.join(outdir, stem + ".prof"))
        finally:
            sm.close()


def _print_pstats(st, n: int, top: int) -> None:
    """Top functions by own time, with the share of the total and the cost per message."""
    total = st.total_tt or 1e-12
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in st.stats.items():
        where = file.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append((tt, ct, nc, f"{where}:{line}({func})"))
    print(f"total {total * 1e3 / n:.2f} ms/message (under cProfile)")
    print(f"{'own%':>6} {'own ms/msg':>11} {'cum%':>6} {'calls/msg':>10}  function")
    for tt, ct, nc, name in sorted(rows, reverse=True)[:top]:
        print(f"{100 * tt / total:6.1f} {tt * 1e3 / n:11.3f} {100 * ct / total:6.1f} {nc / n:10.1f}  {name}")
    print("-- by cumulative time (securemail and pgpy frames) --")
    cum = [r for r in rows if "securemail/" in r[3] or "pgpy/" in r[3]]
    for tt, ct, nc, name in sorted(cum, key=lambda r: -r[1])[:top]:
        print(f"{'':6} {ct * 1e3 / n:11.3f} {100 * ct / total:6.1f} {nc / n:10.1f}  {name}")


# --- main -------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.crypto", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help="comma-separated message sizes, e.g. 4K,64K,1M (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per cell for every implementation (default: per-cell, "
                         "fewer for 1 MiB and for PGPy)")
    ap.add_argument("--json", default="bench/results.json", metavar="FILE",
                    help="write all samples and ratios here (default %(default)s; '-' for none)")
    ap.add_argument("--algos", default=",".join(ALGOS), help="subset of " + ",".join(ALGOS))
    ap.add_argument("--impls", default=",".join(IMPLS), help="subset of " + ",".join(IMPLS))
    ap.add_argument("--mem", choices=("default", "all", "none"), default="default",
                    help="peak-memory pass: default skips PGPy above 64 KiB (tracemalloc makes it "
                         "take minutes); all; none")
    ap.add_argument("--no-interop", action="store_true", help="skip the cross-implementation check")
    ap.add_argument("--profile", action="store_true",
                    help="instead of the benchmark, profile securemail only (default sizes 4K,1M)")
    ap.add_argument("--profiler", choices=("cprofile", "pyinstrument"), default="cprofile")
    ap.add_argument("--top", type=int, default=18, help="rows per profile (default %(default)s)")
    ap.add_argument("--profile-dir", default=None,
                    help="also save .prof (cProfile) or .html (pyinstrument) files here")
    args = ap.parse_args(argv)

    algos = [a for a in args.algos.split(",") if a]
    impls = [i for i in args.impls.split(",") if i]
    for a in algos:
        if a not in ALGOS:
            ap.error(f"unknown algo {a!r}")
    for i in impls:
        if i not in IMPLS:
            ap.error(f"unknown impl {i!r}")
    impls = [i for i in IMPLS if i in impls]  # table columns in the canonical order
    if args.profile:
        sizes = [parse_size(s) for s in (args.sizes if args.sizes != DEFAULT_SIZES else "4K,1M").split(",")]
        profile(algos, sizes, args.repeat, args.profiler, args.top, args.profile_dir)
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    if "gpg" in impls and not shutil.which("gpg"):
        print("gpg not found; leaving it out", file=sys.stderr)
        impls.remove("gpg")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    cells: list[Cell] = []
    interop: list[dict] = []
    setup: dict = {}
    for algo in algos:
        log(f"{ALGO_LABEL[algo]}: generating keys")
        ks = make_keys(algo)
        setup[algo] = ks.setup_ms
        live: dict[str, Impl] = {}
        warmed: set[str] = set()
        try:
            for name in impls:
                try:
                    live[name] = FACTORIES[name](ks)
                except Exception as e:  # noqa: BLE001
                    log(f"  {name}: setup failed: {e}")
            for size in sizes:
                t = time.perf_counter()
                cells += bench_cell(live, algo, size, args.repeat, args.mem, warmed, log)
                log(f"  {size_label(size)}: {time.perf_counter() - t:.1f} s")
            if not args.no_interop:
                interop += interop_checks(algo, live)
        finally:
            for impl in live.values():
                impl.close()
    elapsed = time.perf_counter() - t_start

    table, ratios = render(cells, impls, sizes, algos, "wall")
    print(table)
    print()
    table, cpu_ratios = render(cells, impls, sizes, algos, "cpu")
    print(table)
    ratios += cpu_ratios
    if args.mem != "none":
        print()
        print(render_mem(cells, impls, sizes, algos))
    if interop:
        print("\ninterop (4 KiB, not timed): can the reader get the data and a good signature?")
        for row in interop:
            verdict = "ok" if row["data_ok"] and row["signature_ok"] else (
                "data ok, SIGNATURE NOT VERIFIED" if row["data_ok"] else "FAILED")
            print(f"  {ALGO_LABEL[row['algo']]:<16} {row['from']:>10} -> {row['to']:<10} {verdict}"
                  + (f"  ({row['detail']})" if row["detail"] else ""))
    print(f"\nsetup (ms): " + "; ".join(f"{ALGO_LABEL[a]}: " + ", ".join(f"{k} {v}" for k, v in d.items())
                                      for a, d in setup.items()))
    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1):
        print(f"WARNING: load average {load[0]:.1f} on {os.cpu_count()} CPUs: other work was running; "
              "wall-clock numbers are noisy, trust the CPU table more")
    print(f"total run time {elapsed:.0f} s; process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    if args.json and args.json != "-":
        doc = {"meta": {**versions(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "argv": sys.argv[1:], "elapsed_s": round(elapsed, 1),
                        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
                        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                        "gpg_encrypt_cmd": GPG_BASE + ["-e", "-s", "-a", "-r", "FPR", "-u", "FPR"],
                        "gpg_decrypt_cmd": GPG_BASE + ["--status-fd", "2", "-d"]},
               "setup_ms": setup, "results": [c.as_json() for c in cells], "ratios": ratios,
               "interop": interop}
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(doc, fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
