"""perception-fm bench body: SAM 3D Body alone, i.e. `bench sam3d --models body` (latency per image and per person
against the number of people, peak memory); the options are sam3d's."""
from __future__ import annotations

from perception_fm.bench import sam3d_bench


def main(argv=None) -> int:
    return sam3d_bench.main(["--models", "body", *(argv or [])])


if __name__ == "__main__":
    raise SystemExit(main())
