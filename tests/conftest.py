import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# `make test` runs two pytest-xdist workers on CI's 2 cores: one thread each, or they fight for them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads()) // _WORKERS))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def digits_owner():
    """An owner's small CNN protected and trained on digits: (data, released model, key). Shared by the attack tests."""
    import warnings

    import passportnorm as pn
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.key import extract_key
    from passportnorm.train import TrainConfig, Trainer

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(zoo.build("small_cnn", width=1.0), data.train.tensors[0][:8], signature="(c) A",
                               passports="shuffle", weak_layers="skip", seed=0)
    Trainer(protected, data, TrainConfig(epochs=6, batch_size=32)).fit()
    return data, pn.strip(protected).eval(), extract_key(protected)


@pytest.fixture(scope="session")
def vit_owner():
    """The zoo's ViT protected and trained on digits, and an independent one: (data, release, key,
    independent). Shared by the transformer obfuscation tests."""
    import warnings

    import passportnorm as pn
    from passportnorm import zoo
    from passportnorm.data import load_dataset
    from passportnorm.key import extract_key
    from passportnorm.train import TrainConfig, Trainer

    data = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protected = pn.protect(zoo.build("vit", width=0.25), data.train.tensors[0][:8], signature="(c) A", seed=0)
    Trainer(protected, data, TrainConfig(epochs=3, batch_size=32, lr=0.05)).fit()
    torch.manual_seed(1)
    independent = zoo.build("vit", width=0.25)
    Trainer(independent, data, TrainConfig(epochs=3, batch_size=32, lr=0.05)).fit()
    return data, pn.strip(protected).eval(), extract_key(protected), independent.eval()
