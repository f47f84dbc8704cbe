"""Cluster launchers compose; the SLURM launcher's DDP settings follow its resources."""

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from klexp.app.cli import CONFIG_DIR, CONFIG_NAME


def compose_with_hydra(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)


def test_submitit_slurm_launcher_composes_with_lightning_multi_node_settings():
    cfg = compose_with_hydra(["launcher=submitit_slurm", "hydra.launcher.nodes=2",
                              "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4
    HydraConfig().set_config(cfg)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"]) == (4, 2, "ddp")


def test_ray_launcher_composes():
    cfg = compose_with_hydra(["launcher=ray", "hydra.launcher.ray.init.address=auto"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
    assert cfg.hydra.launcher.ray.init.address == "auto"
    assert cfg.threads == 1


def test_joblib_launcher_composes():
    cfg = compose_with_hydra(["launcher=joblib"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
