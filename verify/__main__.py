"""``python -m verify``: see :mod:`verify.cli` (``python -m verify estimators``: :mod:`verify.estimators.cli`)."""

import sys

if sys.argv[1:2] == ["estimators"]:
    from .estimators.cli import main as estimators_main
    sys.exit(estimators_main(sys.argv[2:]))

from .cli import main  # noqa: E402

sys.exit(main())
