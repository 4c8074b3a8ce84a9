# Sourced by every device call: the carried wheels (.whl) into /tmp/site, and the paths
# that put them, the source and bench/ before the machine's own packages.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench PYTHONUNBUFFERED=1
