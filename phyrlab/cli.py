"""The ``phyrlab`` command: ``lab``, ``report``, ``inspect`` (this machine), ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: JupyterLab settings for presenting offline: no news fetch (its pop-up covers the page, and
#: there is no network), and no virtual windowing, which jupyterlab-slideshow's deck needs.
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


def write_lab_overrides(prefix: Path = Path(sys.prefix)) -> Path:
    """Install :data:`LAB_OVERRIDES` as this environment's ``overrides.json``."""
    path = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**current, **LAB_OVERRIDES}, indent=2))
    return path


def cmd_lab(args: argparse.Namespace) -> int:
    """Open JupyterLab on notebooks/."""
    write_lab_overrides()
    argv = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={ROOT / 'notebooks'}"]
    if args.no_browser:
        argv.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # containers and lab machines often run as root
    return subprocess.call(argv + list(args.extra))


def cmd_report(args: argparse.Namespace) -> int:
    """Execute every notebook headless and write an offline HTML site."""
    from .report import build_site

    index = build_site(Path(args.out), only=args.only)
    print(f"wrote {index}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """This machine: PCI tree (sysfs) and the physical contiguity of a real buffer."""
    from .inspect import inspect_machine

    print(inspect_machine(size=args.size))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the scripts in benchmarks/ (each prints its ratios)."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only]
    rc = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        rc |= subprocess.call([sys.executable, str(script), *(["--quick"] if args.quick else [])])
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="phyrlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lab", help=cmd_lab.__doc__)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("extra", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_lab)
    p = sub.add_parser("report", help=cmd_report.__doc__)
    p.add_argument("--out", default="site")
    p.add_argument("--only", nargs="*", help="notebook stems to include (default: all)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("inspect", help=cmd_inspect.__doc__)
    p.add_argument("--size", type=int, default=64 << 20, help="bytes of the probe buffer")
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("bench", help=cmd_bench.__doc__)
    p.add_argument("--only", nargs="*", help="benchmark names (e.g. layouts iommu dma)")
    p.add_argument("--quick", action="store_true", help="smaller sizes")
    p.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
