"""Train binder: ``python train.py modality=audio`` (Hydra overrides; ``--help`` lists them).

The same app as the ``binder train`` command of an installed binder; see binder.training.
"""
from binder.training import main

if __name__ == "__main__":
    main()
