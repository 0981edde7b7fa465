"""The seed-style baseline the targets are measured against: torchvision transforms in a
DataLoader, fp32, Adam, one image at a time for prediction. Deliberately ordinary."""

import torch
import torch.nn.functional as F
from torchvision import datasets, transforms

from vit.config import DEFAULT_MEAN, DEFAULT_STD


def seed_transform(img_size: int, mean, std):
    return transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


def seed_loader(folder, img_size: int, batch_size: int, workers: int, mean=DEFAULT_MEAN, std=DEFAULT_STD):
    dataset = datasets.ImageFolder(folder, transform=seed_transform(img_size, mean, std))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


def seed_train_steps(model, loader, device, steps: int):
    """fp32, Adam, plain loop: yields after each step so the caller can time."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    done = 0
    while done < steps:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the usual per-step logging sync
            done += 1
            if done == steps:
                return
