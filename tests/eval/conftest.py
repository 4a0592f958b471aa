import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel


@pytest.fixture(scope="session")
def tiny_unet():
    """A random class-conditional UNet (3 classes + null label 3), small enough for seconds-long tests."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=4, norm_num_groups=4,
    ).eval()


@pytest.fixture(scope="session")
def tiny_scheduler():
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
