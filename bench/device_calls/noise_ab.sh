# The tutorial-shaped job on N particles (default 3000), refined twice from the same data:
# the pseudo-subtomograms' noise by CTF^2 (default) and by multiplicity (RELION-4's rule).
# env: N, TA and TB (seconds for each refine). Outputs: a.json, b.json and their run.logs.
set -o pipefail
. bench/device_calls/setup.sh
W=/tmp/ab; rm -rf $W; mkdir -p $W/b
common="--tutorial .carry/tutorial --gpu --n_particles ${N:-3000} --no_floor --precision tf32 --continue_run"
timeout -s TERM ${TA:-250} python3 bench/tutorial_bench.py $common --work $W/a --out $OUT/a.json > $OUT/a_stdout.log 2>&1
echo rc_a=$?
cp $W/a/Refine3D/run.log $OUT/a_run.log
ln -s $W/a/sim $W/b/sim
timeout -s TERM ${TB:-220} python3 bench/tutorial_bench.py $common --work $W/b --out $OUT/b.json --refine_flags=--subtomo_noise_multiplicity > $OUT/b_stdout.log 2>&1
echo rc_b=$?
cp $W/b/Refine3D/run.log $OUT/b_run.log
for f in a b; do grep -o "median_angular_error_deg[^,]*\|resolution_0143_angst[^,]*\|\"refine_seconds[^,]*\|\"iterations\": [0-9]*" $OUT/$f.json | head -6; done
nvidia-smi --query-gpu=name --format=csv,noheader
