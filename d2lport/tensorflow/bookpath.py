"""The book's own TensorFlow code for `d2lport bench` (issue 10): D2L 1.0's GoogLeNet (8.4)
and narrow VGG-11 (8.2) written the way the chapters write them, with Keras' defaults ('same'
padding, Glorot-uniform kernels, zero biases), and the two ways the bench trains them as
reference points for d2lport:

* ``book``: ``d2l.Trainer``'s loop: an eager ``tf.GradientTape`` step (no ``tf.function``),
  ``keras.optimizers.SGD``, sparse categorical cross-entropy from logits;
* ``fast``: what a practitioner does without d2lport: ``model.compile`` +
  ``train_on_batch``, and ``predict_on_batch`` to run it.

Nothing here uses d2lport's networks or training code; only the numbers come from ``specs``.
Shapes are NHWC, as the TensorFlow loader yields them.
"""
import keras
import tensorflow as tf

from .. import registry, specs

BOOK_MODELS = registry.BOOK_MODELS


class Inception(keras.Model):
    # c1--c4 are the number of output channels for each branch
    def __init__(self, c1, c2, c3, c4):
        super().__init__()
        self.b1_1 = keras.layers.Conv2D(c1, 1, activation='relu')
        self.b2_1 = keras.layers.Conv2D(c2[0], 1, activation='relu')
        self.b2_2 = keras.layers.Conv2D(c2[1], 3, padding='same', activation='relu')
        self.b3_1 = keras.layers.Conv2D(c3[0], 1, activation='relu')
        self.b3_2 = keras.layers.Conv2D(c3[1], 5, padding='same', activation='relu')
        self.b4_1 = keras.layers.MaxPool2D(3, 1, padding='same')
        self.b4_2 = keras.layers.Conv2D(c4, 1, activation='relu')

    def call(self, x):
        b1 = self.b1_1(x)
        b2 = self.b2_2(self.b2_1(x))
        b3 = self.b3_2(self.b3_1(x))
        b4 = self.b4_2(self.b4_1(x))
        return keras.layers.Concatenate()([b1, b2, b3, b4])


def googlenet(num_classes=10):
    def inceptions(names):             # D2L's channel tables: specs.INCEPTION_CHANNELS
        return [Inception(*specs.INCEPTION_CHANNELS[name]) for name in names]
    # TF's 'same' pads asymmetrically at stride 2 (7x7/2 on 96 px: 2 before, 3 after; the
    # 3x3/2 pools: 0 and 1); d2lport pads 3 and 1 on both sides as PyTorch does.  Same sizes.
    b1 = keras.Sequential([
        keras.layers.Conv2D(64, 7, strides=2, padding='same', activation='relu'),
        keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')])
    b2 = keras.Sequential([
        keras.layers.Conv2D(64, 1, activation='relu'),
        keras.layers.Conv2D(192, 3, padding='same', activation='relu'),
        keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')])
    b3 = keras.Sequential(inceptions(specs.STAGE3) + [
        keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')])
    b4 = keras.Sequential(inceptions(specs.STAGE4) + [
        keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same')])
    b5 = keras.Sequential(inceptions(specs.STAGE5) + [
        keras.layers.GlobalAvgPool2D(), keras.layers.Flatten()])
    return keras.Sequential([b1, b2, b3, b4, b5, keras.layers.Dense(num_classes)])


def vgg_block(num_convs, num_channels):
    blk = keras.Sequential()
    for _ in range(num_convs):
        blk.add(keras.layers.Conv2D(num_channels, kernel_size=3, padding='same',
                                    activation='relu'))
    blk.add(keras.layers.MaxPool2D(pool_size=2, strides=2))
    return blk



def vgg(arch, num_classes=10):
    net = keras.Sequential()
    for (num_convs, num_channels) in arch:
        net.add(vgg_block(num_convs, num_channels))
    # Flatten reads NHWC, d2lport's fc1 the canonical CHW order: the same weights, permuted.
    net.add(keras.Sequential([
        keras.layers.Flatten(),
        keras.layers.Dense(specs.VGG_FC, activation='relu'),
        keras.layers.Dropout(specs.VGG_DROPOUT),
        keras.layers.Dense(specs.VGG_FC, activation='relu'),
        keras.layers.Dropout(specs.VGG_DROPOUT),
        keras.layers.Dense(num_classes)]))
    return net


def book_model(name: str, fast: bool = False):
    """The book's network ``name``, built by one (1, S, S, 1) forward pass (S = 96 for
    googlenet, 224 for vgg_d2l).  ``fast`` changes nothing here: the fast path is the
    Runner's ``compile``."""
    num_classes, arch = registry.book_args(name)
    spec = registry.get_spec(name)
    net = googlenet(num_classes) if arch is None else vgg(arch, num_classes)
    channels, height, width = spec.input_shape
    net(tf.zeros((1, height, width, channels)))
    return net


class Runner:
    """One way of training and running a book model (``path`` "book" or "fast", above)."""

    def __init__(self, path: str, model: str, lr: float = 0.01, device=None):
        if path not in ("book", "fast"):
            raise ValueError(f"unknown path {path!r}: 'book' or 'fast'")
        self.path, self.model = path, model
        self.device = device if device is not None else "/CPU:0"
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        with tf.device(self.device):
            self.net = book_model(model, fast=path == "fast")
            self.optim = keras.optimizers.SGD(lr)           # d2l.Classifier's
            if path == "fast":   # Keras' default jit_compile="auto": XLA on GPUs, not on CPUs
                self.net.compile(optimizer=self.optim, loss=self.loss)

    def train_step(self, X, y) -> float:
        with tf.device(self.device):
            if self.path == "fast":
                return float(self.net.train_on_batch(X, y))
            # d2l's Module calls self.net(X) with no `training` flag, so Keras' Dropout stays
            # off in the book's TensorFlow training (train_on_batch turns it on).
            with tf.GradientTape() as tape:
                loss = self.loss(y, self.net(X))
            grads = tape.gradient(loss, self.net.trainable_variables)
            self.optim.apply_gradients(zip(grads, self.net.trainable_variables))
            return float(loss)

    def infer(self, X) -> float:
        with tf.device(self.device):
            if self.path == "fast":
                return float(self.net.predict_on_batch(X).sum())
            return float(tf.reduce_sum(self.net(X, training=False)))

    def describe(self) -> str:
        if self.path == "book":
            return "book: eager tf.GradientTape step, keras.optimizers.SGD"
        return "fast: Keras compile + train_on_batch, predict_on_batch"
