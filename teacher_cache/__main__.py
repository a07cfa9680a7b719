import sys

from teacher_cache.cli import main

sys.exit(main())
