"""``python -m codec.train CONFIG.yaml [key=value ...] [--resume] [--export RUN_DIR OUT_DIR]``
(also the target of ``torchrun --nproc_per_node N -m codec.train ...``)."""
import sys

from codec.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
