"""A Flax CNN trained with adamx on CIFAR-10 or Fashion-MNIST: see README.md."""
