"""Hand-written ops: each file holds one op's math, forward and backward.

Convention: ``y, cache = op_forward(inputs..., hyper...)`` and
``grads = op_backward(dy, cache)``, where ``grads`` lists the gradient of every array input of the
forward in its order (None for an absent optional input). Backward never writes into ``dy``.
"""
from .linear import linear_backward, linear_forward
