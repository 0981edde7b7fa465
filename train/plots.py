"""PNG plots of a run: loss and accuracy curves, and the test confusion matrix."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402


def save_plots(history: list[dict], confusion: list[list[int]] | None, class_names: list[str], output_dir: Path) -> None:
    steps = [h for h in history if h["kind"] == "step"]
    epochs = [h for h in history if h["kind"] == "epoch"]
    steps_per_epoch = max((h["step"] for h in steps), default=0) / max(1, len(epochs) or 1)

    accuracy = all("test_acc" in h for h in epochs)  # (MAE pretraining has a loss alone)
    figure, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(11 if accuracy else 6, 4), squeeze=False)
    loss_axis = axes[0][0]
    loss_axis.plot([h["step"] for h in steps], [h["loss"] for h in steps], label="train (running, per epoch)")
    loss_axis.plot([h["epoch"] * steps_per_epoch for h in epochs], [h["test_loss"] for h in epochs], "o-", label="test")
    loss_axis.set(xlabel="step", ylabel="cross-entropy" if accuracy else "masked-patch loss", title="loss")
    loss_axis.legend()
    if accuracy:
        plot_accuracy(axes[0][1], epochs)
    figure.tight_layout()
    figure.savefig(output_dir / "curves.png", dpi=100)
    plt.close(figure)
    if confusion is not None:
        plot_confusion(confusion, class_names, output_dir)


def plot_accuracy(acc_axis, epochs: list[dict]) -> None:
    acc_axis.plot([h["epoch"] for h in epochs], [100 * h["train_acc"] for h in epochs], "o-", label="train")
    acc_axis.plot([h["epoch"] for h in epochs], [100 * h["test_acc"] for h in epochs], "o-", label="test")
    acc_axis.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    acc_axis.legend()


def plot_confusion(confusion: list[list[int]], class_names: list[str], output_dir: Path) -> None:
    n = len(class_names)
    figure, axis = plt.subplots(figsize=(1 + 0.6 * n, 1 + 0.6 * n))
    axis.imshow(confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            axis.text(j, i, confusion[i][j], ha="center", va="center", fontsize=7)
    axis.set_xticks(range(n), class_names, rotation=45, ha="right")
    axis.set_yticks(range(n), class_names)
    axis.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    figure.tight_layout()
    figure.savefig(output_dir / "confusion_matrix.png", dpi=100)
    plt.close(figure)
