"""`python -m omni_batch`: the CLI. Ctrl-C while it is still starting (its imports) is the
same one line and exit code 130 as Ctrl-C while it plans, never a traceback."""

import sys

try:
    from omni_batch.cli.main import main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(130)

main()
