"""Train binder: ``python train.py modality=audio`` (Hydra overrides; see configs/train.yaml)."""
import logging

import hydra
from omegaconf import DictConfig

from binder.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)
    train(cfg)


if __name__ == "__main__":
    main()
