"""Every weight encoding a .tasr file may use, by name: dense (and float16), sparse (CSR, BSR, int8) and
regenerated ternary.  A new encoding is a module here with a ``FILE_ENCODINGS`` tuple, added below."""

from typing import Dict

from tinyasr.format.encodings import dense, sparse, ternary
from tinyasr.format.tensors import Encoding

ENCODINGS: Dict[str, Encoding] = {
    encoding.name: encoding
    for module in (dense, sparse, ternary)
    for encoding in module.FILE_ENCODINGS
}
