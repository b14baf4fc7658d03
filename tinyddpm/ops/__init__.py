"""Hand-written ops: each file holds one op's math, forward and backward, and names its proof.

Convention: ``y, cache = op_forward(inputs..., hyper...)`` and
``grads = op_backward(dy, cache)``, where ``grads`` lists the gradient of every float array input of
the forward in its order (None for an absent optional input; a single array, not a tuple, when there
is one: silu, gelu, dropout, upsample, space_to_depth, timestep_embedding's t, label_embedding's table;
the losses' weights are constants and get none). Backward never writes into ``dy``. Argument checks
live at the bottom of each file (``check_conv2d`` and the like) and are called in one line at the top
of the forward, so the forward reads math first. Every file's docstring ends with a "Proof:" line
naming its tests and its rows of ``python -m tinyddpm.gradcheck``.
"""
from .attention import attention_backward, attention_forward
from .conv2d import conv2d_backward, conv2d_forward
from .conv_transpose2d import conv_transpose2d_backward, conv_transpose2d_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import (label_embedding_backward, label_embedding_forward, timestep_embedding_backward,
                        timestep_embedding_forward)
from .gelu import gelu_backward, gelu_forward
from .groupnorm import groupnorm_backward, groupnorm_forward
from .groupnorm_fast import groupnorm_fast_backward, groupnorm_fast_forward
from .groupnorm_silu import groupnorm_silu_backward, groupnorm_silu_forward
from .linear import linear_backward, linear_forward
from .losses import (l1_loss_backward, l1_loss_forward, mse_loss_backward, mse_loss_forward,
                     softmax_cross_entropy_backward, softmax_cross_entropy_forward)
from .silu import silu_backward, silu_forward
from .skip import add_backward, add_forward, concat_backward, concat_forward
from .space_to_depth import space_to_depth_backward, space_to_depth_forward
from .upsample import upsample_nearest2x_backward, upsample_nearest2x_forward
from .upsample_conv import upsample_conv3x3_backward, upsample_conv3x3_forward
from .ws_conv2d import ws_conv2d_backward, ws_conv2d_forward
