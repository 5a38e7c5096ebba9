"""`python -m anekit.fuzz TARGET [--cases N] [--seed S] [--case I] [--json]`; see `anekit.fuzz`."""

from __future__ import annotations

import argparse
import json
import sys

from . import TARGET_MODULES, run, run_one, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anekit.fuzz",
        description="Seeded fuzz of anekit's input readers. Exit status 0 only when every case either "
        "succeeded or was refused with an anekit error (no other exception, no hang).",
    )
    parser.add_argument("targets", nargs="+", choices=[*TARGET_MODULES, "all"], help="what to fuzz")
    parser.add_argument("--cases", type=int, default=20_000, help="cases per target (default 20000)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--case", type=int, default=None, help="replay this one case and show its traceback")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    parser.add_argument("--json", action="store_true", help="print one JSON report per target, nothing else")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.timeout <= 0:
        parser.error("--cases must be >= 1 and --timeout > 0")
    names = list(TARGET_MODULES) if "all" in args.targets else list(dict.fromkeys(args.targets))

    if args.case is not None:
        status = 0
        for name in names:
            outcome, defect = run_one(target(name), args.seed, args.case, args.timeout)
            print(f"{name} seed {args.seed} case {args.case}: {outcome}")
            if defect is not None:
                print(f"input: {defect.input}\n{defect.traceback or defect.error}")
                status = 1
        return status

    reports = []
    for name in names:
        step = max(1, args.cases // 10)

        def progress(done: int, name=name, step=step) -> None:
            if not args.json and (done % step == 0 or done == args.cases):
                print(f"{name}: {done}/{args.cases}", file=sys.stderr, flush=True)

        reports.append(run(name, args.cases, args.seed, args.timeout, progress=progress))
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=1))
    else:
        for r in reports:
            c = r.counts
            print(
                f"{r.target}: {r.cases} cases (seed {r.seed}) in {r.seconds:.1f} s: {c['ok']} ok, "
                f"{c['anekit_error']} anekit errors, {c['other']} other exceptions, {c['hang']} hangs"
            )
            for d in r.defects[:5]:
                print(f"  case {d.case}: {d.outcome}: {d.error}  (replay: --seed {r.seed} --case {d.case})")
    return 0 if all(r.clean for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
