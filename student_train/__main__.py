import sys

from student_train.cli import main

sys.exit(main())
