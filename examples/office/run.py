"""The office example, runnable: two ministries on loopback, each with real Postfix, Dovecot and a gateway.

interieur.gouv.fr and justice.gouv.fr each run a private Postfix and Dovecot
(configured from postfix/main.cf, postfix/master.cf and dovecot/dovecot.conf in
this directory) and a securemail gateway; paths.py says what the five paths
check. Needs root (Postfix and Dovecot start as root and drop privileges) and
the Debian packages postfix, dovecot-imapd, dovecot-lmtpd, isync, swaks (with
libnet-ssleay-perl for STARTTLS), neomutt and gnupg. Prints each step and the
time each path took; exits 0 only when every path worked. Run: `make office`
(or python examples/office/run.py [WORK_DIR], the work directory kept then).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]  # the package office, and securemail's tree

from office.instances import PACKAGES, InstanceError, missing_programs, systemd_unit, unit_exposure  # noqa: E402
from office.paths import run_paths  # noqa: E402
from office.scenario import World, build  # noqa: E402


def logs(w: World) -> None:
    for d, m in w.ministries.items():
        for name, path in (("postfix", m.postfix.log), ("dovecot", m.dovecot.log), ("gateway", m.gateway.log)):
            if path.exists():
                print(f"--- {d} {name} log ({path})\n{path.read_text(errors='replace')[-2500:]}")


def scenario(work: Path) -> int:
    t0 = time.monotonic()
    try:
        w = build(work, print)
    except InstanceError as e:
        print(f"\nFAILED during setup: {e}")
        return 1
    print(f"   setup took {time.monotonic() - t0:.1f} s")
    gateway = w.ministries["interieur.gouv.fr"].gateway.home
    unit = systemd_unit(work / "securemail.service", securemail=Path(sys.executable).parent / "securemail", home=gateway)
    exposure = unit_exposure(unit)
    print(f"   systemd unit for {gateway.name} ({unit}): systemd-analyze security exposure "
          + (f"{exposure} (at most 2.0 wanted)" if exposure is not None else "not measured (no systemd-analyze)"))
    try:
        results = run_paths(w)
    finally:
        w.close()
    print("\n== summary")
    for title, ok, seconds, _ in results:
        print(f"   {'ok    ' if ok else 'FAILED'} {seconds:5.1f} s  {re.split('[:;]', title)[0]}")
    ok = all(r[1] for r in results)
    if not ok:
        logs(w)
    print(f"\noffice: {'OK' if ok else 'FAILED'} ({time.monotonic() - t0:.0f} s)")
    return 0 if ok else 1


def main() -> int:
    missing = missing_programs()
    if missing:
        print(f"office: missing {', '.join(missing)}; apt-get install {PACKAGES}")
        return 1
    if os.geteuid() != 0:
        print("office: Postfix and Dovecot instances start as root (they drop privileges); run as root")
        return 1
    if len(sys.argv) > 1:
        return scenario(Path(sys.argv[1]).resolve())
    with tempfile.TemporaryDirectory(prefix="office-") as d:
        return scenario(Path(d))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
