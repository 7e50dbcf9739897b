"""Neural layers of the codec: causal/streamable convolutions, activations, streaming state; the two layer
families live in :mod:`codec.nn.seanet` (time domain) and :mod:`codec.nn.fourier` (frame rate).

Public: :class:`StreamingModule`, :class:`StreamingConv1d`, :class:`StreamingConvTranspose1d`,
:class:`Snake`, :class:`ELU`, :func:`make_activation`, :func:`exact_linear`.
"""
from .activations import ELU, Snake, make_activation
from .conv import StreamingConv1d, StreamingConvTranspose1d, exact_linear
from .streaming import StreamingModule, streaming_modules

__all__ = ["StreamingModule", "streaming_modules", "StreamingConv1d", "StreamingConvTranspose1d", "exact_linear",
           "Snake", "ELU", "make_activation"]
