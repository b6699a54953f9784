"""The book's own PyTorch code for `d2lport bench` (issue 10): D2L 1.0's GoogLeNet (8.4) and
narrow VGG-11 (8.2) written the way the chapters write them, with PyTorch's defaults, and the
two ways the bench trains them as reference points for d2lport:

* ``book``: ``d2l.Trainer``'s loop (``d2l.torch`` needs torchvision, so it is written out):
  eager NCHW, ``torch.optim.SGD``, ``zero_grad`` / ``backward`` / ``step``;
* ``fast``: what a practitioner does without d2lport: the same model and loop, channels-last.

Nothing here uses d2lport's networks or training code; only the numbers come from ``specs``.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .. import registry, specs

BOOK_MODELS = registry.BOOK_MODELS


class Inception(nn.Module):
    # c1--c4 are the number of output channels for each branch
    def __init__(self, c1, c2, c3, c4):
        super().__init__()
        self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
        self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
        self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
        self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
        self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
        self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

    def forward(self, x):
        b1 = F.relu(self.b1_1(x))
        b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
        b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
        b4 = F.relu(self.b4_2(self.b4_1(x)))
        return torch.cat((b1, b2, b3, b4), dim=1)


def googlenet(num_classes=10):
    def inceptions(names):             # D2L's channel tables: specs.INCEPTION_CHANNELS
        return [Inception(*specs.INCEPTION_CHANNELS[name]) for name in names]
    b1 = nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b2 = nn.Sequential(nn.LazyConv2d(64, kernel_size=1), nn.ReLU(),
                       nn.LazyConv2d(192, kernel_size=3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b3 = nn.Sequential(*inceptions(specs.STAGE3), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b4 = nn.Sequential(*inceptions(specs.STAGE4), nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    b5 = nn.Sequential(*inceptions(specs.STAGE5), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return nn.Sequential(b1, b2, b3, b4, b5, nn.LazyLinear(num_classes))


def vgg_block(num_convs, out_channels):
    layers = []
    for _ in range(num_convs):
        layers.append(nn.LazyConv2d(out_channels, kernel_size=3, padding=1))
        layers.append(nn.ReLU())
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)



def vgg(arch, num_classes=10):
    conv_blks = [vgg_block(num_convs, out_channels) for num_convs, out_channels in arch]
    return nn.Sequential(
        *conv_blks, nn.Flatten(),
        nn.LazyLinear(specs.VGG_FC), nn.ReLU(), nn.Dropout(specs.VGG_DROPOUT),
        nn.LazyLinear(specs.VGG_FC), nn.ReLU(), nn.Dropout(specs.VGG_DROPOUT),
        nn.LazyLinear(num_classes))


def book_model(name: str, fast: bool = False):
    """The book's network ``name``, its lazy layers built by one (1, 1, S, S) forward pass
    (S = 96 for googlenet, 224 for vgg_d2l); ``fast``: moved to channels-last memory."""
    num_classes, arch = registry.book_args(name)
    spec = registry.get_spec(name)
    net = googlenet(num_classes) if arch is None else vgg(arch, num_classes)
    # PyTorch's default init (kaiming-uniform); the book then applies d2l.init_cnn (Xavier
    # uniform weights), d2lport uses Xavier weights and zero biases: the cost is the same.
    net(torch.zeros((1,) + tuple(spec.input_shape)))
    return net.to(memory_format=torch.channels_last) if fast else net


class Runner:
    """One way of training and running a book model (``path`` "book" or "fast", above)."""

    def __init__(self, path: str, model: str, lr: float = 0.01, device=None):
        if path not in ("book", "fast"):
            raise ValueError(f"unknown path {path!r}: 'book' or 'fast'")
        self.path, self.model = path, model
        self.device = torch.device(device if device is not None else "cpu")
        self.memory_format = torch.channels_last if path == "fast" else torch.contiguous_format
        self.net = book_model(model, fast=path == "fast").to(self.device)
        self.optim = torch.optim.SGD(self.net.parameters(), lr=lr)   # d2l.Classifier's

    def _input(self, X):
        return X.to(self.device).contiguous(memory_format=self.memory_format)

    def _mode(self, training):
        if self.net.training != training:        # d2l.Trainer switches once per epoch
            self.net.train(training)

    def train_step(self, X, y) -> float:
        self._mode(True)
        loss = F.cross_entropy(self.net(self._input(X)), y.to(self.device))
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return loss.item()

    def infer(self, X) -> float:
        self._mode(False)
        with torch.no_grad():
            return self.net(self._input(X)).sum().item()

    def describe(self) -> str:
        if self.path == "book":
            return "book: eager NCHW, torch.optim.SGD"
        return "fast: eager channels_last model and input, torch.optim.SGD"
