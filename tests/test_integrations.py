"""Optional integrations: PyTorch Lightning callback and Hugging Face Trainer (CPU, real libraries)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

# --------------------------------------------------------------------------- Lightning


def _lightning():
    try:
        import lightning.pytorch as L
    except ImportError:
        L = pytest.importorskip("pytorch_lightning")
    return L


def _lit_module_class(L):
    class TinyLit(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = nn.Module()
            self.model.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
            self.model.fc = nn.Linear(8, 3)
            self.ratios = []

        def forward(self, x):
            return self.model.fc(self.model.body(x))

        def training_step(self, batch, batch_idx):
            x, y = batch
            self.ratios.append(self.isda.ratio)
            return self.isda(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return TinyLit


def _loaders(n=40, batch=8):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=batch), DataLoader(data, batch_size=batch)


def _trainer(L, tmp_path, epochs, callback, checkpointing):
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=checkpointing,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[callback], num_sanity_val_steps=0,
    )


def test_lightning_callback_counts_schedules_and_checkpoints(tmp_path):
    L = _lightning()
    from torch_isda.integrations.lightning import ISDACallback

    TinyLit = _lit_module_class(L)
    train, val = _loaders()
    module = TinyLit()
    callback = ISDACallback(lambda0=0.5, kind="full")
    trainer = _trainer(L, tmp_path, 2, callback, checkpointing=False)
    trainer.fit(module, train, val)

    est = callback.criterion.estimator
    assert callback.criterion.layer is module.model.fc
    assert int(est.count.sum()) == 2 * 40  # two epochs of 40 samples; validation did not update
    steps = trainer.global_step
    assert steps == 10
    assert module.ratios[0] == 0.0 and module.ratios[-1] == pytest.approx(0.5 * 9 / 10)
    assert "isda" not in dict(module.named_modules())  # not a submodule: model state_dict untouched
    assert not any(k.startswith("isda") for k in module.state_dict())

    ckpt = tmp_path / "isda.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["torch_isda"]
    assert torch.equal(saved["isda.estimator.count"], est.count)

    # resume in a fresh module + callback: the statistics come back and keep accumulating
    module2 = TinyLit()
    callback2 = ISDACallback(lambda0=0.5, kind="full")
    trainer2 = _trainer(L, tmp_path, 3, callback2, checkpointing=False)
    trainer2.fit(module2, train, val, ckpt_path=str(ckpt))
    est2 = callback2.criterion.estimator
    assert int(est2.count.sum()) == 3 * 40
    assert module2.ratios[0] == pytest.approx(0.5 * 10 / 15)

    # restoring alone (on_load_checkpoint into a set-up callback) gives the saved statistics
    callback3 = ISDACallback(lambda0=0.5, kind="full")
    module3 = TinyLit()
    callback3.setup(None, module3, "fit")
    callback3.on_load_checkpoint(None, module3, torch.load(ckpt, weights_only=False))
    torch.testing.assert_close(callback3.criterion.estimator.covariance, est.covariance)
    torch.testing.assert_close(callback3.criterion.estimator.mean, est.mean)


def test_lightning_callback_layer_errors():
    L = _lightning()
    from torch_isda.integrations.lightning import ISDACallback

    class NoHead(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

    with pytest.raises(ValueError, match="could not find the final nn.Linear"):
        ISDACallback().setup(None, NoHead(), "fit")
    with pytest.raises(ValueError, match="progress"):
        ISDACallback(progress="batch")


# --------------------------------------------------------------------------- transformers


class _TokenDataset(Dataset):
    def __init__(self, n=12, seq=6, vocab=50, classes=3):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=g)
        self.labels = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def _bert(num_labels=3):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50,
        max_position_embeddings=16, num_labels=num_labels,
    )
    torch.manual_seed(0)
    return transformers, transformers.BertForSequenceClassification(config)


def _args(transformers, out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3, report_to=[],
        use_cpu=True, logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_hf_trainer_updates_estimator_and_resumes(tmp_path):
    transformers, model = _bert()
    from torch_isda.integrations.transformers import ISDA_STATE_NAME, ISDATrainer

    data = _TokenDataset()
    args = _args(transformers, tmp_path, max_steps=3, save_strategy="steps", save_steps=3)
    trainer = ISDATrainer(model=model, args=args, train_dataset=data, isda_lambda0=0.5, isda_kind="diagonal")
    assert trainer.isda.layer is model.classifier
    W0 = model.classifier.weight.detach().clone()
    trainer.train()
    est = trainer.isda.estimator
    assert int(est.count.sum()) == 3 * 4  # three steps of four sequences
    assert est.kind == "diagonal" and est.covariance.abs().sum() > 0
    assert not torch.equal(W0, model.classifier.weight)
    assert trainer.isda.ratio == pytest.approx(0.5 * 2 / 3)  # progress at the last step: t=2 of T=3
    folder = tmp_path / "checkpoint-3"
    assert (folder / ISDA_STATE_NAME).is_file()

    # evaluation uses the model's own loss and does not touch the statistics
    before = est.count.clone()
    metrics = trainer.evaluate(eval_dataset=data)
    assert "eval_loss" in metrics and torch.equal(est.count, before)

    # resume from the checkpoint with a fresh trainer: the estimator is restored first
    _, model2 = _bert()
    args2 = _args(transformers, tmp_path, max_steps=5)
    trainer2 = ISDATrainer(model=model2, args=args2, train_dataset=data, isda_lambda0=0.5, isda_kind="diagonal")
    trainer2.train(resume_from_checkpoint=str(folder))
    assert int(trainer2.isda.estimator.count.sum()) == 5 * 4


def test_isda_compute_loss_helper():
    transformers, model = _bert()
    from torch_isda import attach
    from torch_isda.integrations.transformers import find_sequence_classifier, isda_compute_loss

    crit = attach(model, 0.5, "full", layer=find_sequence_classifier(model), constant_lambda=True)
    data = _TokenDataset()
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("input_ids", "attention_mask", "labels")}
    loss, outputs = isda_compute_loss(crit, model, batch, return_outputs=True)
    plain = F.cross_entropy(outputs.logits, batch["labels"])
    assert loss.item() >= plain.item() - 1e-6  # the bound: augmentation only adds to the loss
    loss.backward()
    assert model.classifier.weight.grad is not None and int(crit.estimator.count.sum()) == 4
    with pytest.raises(ValueError, match="labels"):
        isda_compute_loss(crit, model, {"input_ids": batch["input_ids"]})
