"""MoCo in your own training loop: a standard DataLoader, any torchvision backbone, your optimiser.

    python examples/own_loop.py --data ../shared/datasets/cifar10/train --steps 20
"""

import argparse

import torch
import torchvision
from torchvision import transforms

import moco

p = argparse.ArgumentParser()
p.add_argument("--data", required=True, help="an ImageFolder (labels are ignored)")
p.add_argument("--arch", default="resnet18", help="any torchvision classification model")
p.add_argument("--size", type=int, default=32)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--steps", type=int, default=100)
args = p.parse_args()

# uint8 images of one size: moco.augment makes the two views of a whole batch at once
to_uint8 = transforms.Compose([transforms.Resize(args.size), transforms.CenterCrop(args.size),
                               transforms.PILToTensor()])
dataset = torchvision.datasets.ImageFolder(args.data, transform=to_uint8)
loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True)

backbone = moco.remove_classifier(torchvision.models.get_model(args.arch, weights=None))  # features, no classes
model = moco.MoCo.from_backbone(backbone, dim=128, K=4096, m=0.99, T=0.1, image_size=args.size,
                                bn_splits=max(1, min(8, args.batch_size // 16)))  # SplitBN: groups of 16+
optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06, momentum=0.9,
                            weight_decay=5e-4)

step = 0
while step < args.steps:
    for images, _ in loader:
        view_q, view_k = moco.augment(images, recipe="cifar")
        loss, logits = model(view_q, view_k)  # updates the key encoder and the queue
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 10 == 0 or step == args.steps:
            print(f"step {step}  loss {loss.item():.3f}  pretext acc {(logits.argmax(1) == 0).float().mean():.2%}")
        if step == args.steps:
            break

# the trained backbone loads strictly into torchvision's constructor once its classifier is removed the same way
torch.save(model.encoder_q.backbone.state_dict(), "own_loop_backbone.pt")
