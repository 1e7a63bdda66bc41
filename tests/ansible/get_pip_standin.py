"""Stand-in for the pip bootstrap script ansible-test downloads (get-pip.py).

ansible-test sanity builds a virtual environment per test and, when the environment has no pip,
runs `get_pip_<version>.py ARGS...` from its cache (~/.ansible/test/cache/); offline machines
cannot download the real one. tests/ansible_static.rs saves this file there instead. The
environment's Python brings its own pip wheel (ensurepip), and the requirements ansible-test
asks for (ARGS: options and pinned packages, such as `pip==21.3.1 setuptools==...`) then come from
the package index as they would with the real script.
"""

import subprocess
import sys


def main():
    # ensurepip installs the pip wheel bundled with this interpreter, without the network.
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    subprocess.check_call([sys.executable, "-m", "pip", "install"] + sys.argv[1:])


if __name__ == "__main__":
    main()
