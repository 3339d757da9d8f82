#!/bin/sh
# Attacks on a governed workload under BPF LSM, meant for a QEMU guest:
#
#   cargo xtask vm-run -- sh tests/vm/lsm-attack.sh
#
# Starts the agent (target/debug/forge, on the guest's PATH) governing the
# cgroup `attack` with a policy that denies reading /tmp/secret, exec of
# /tmp/tool and signals to the agent; then, from a shell inside that cgroup,
# tries the direct route and the detours (a symlink, a `..` path, a hard
# link, a copy run under another name, kill). Exits 0 when the kernel denied
# every attempt, 1 when one got through. Everything happens in the guest's
# own memory; the host is not touched.
set -u
dir=/tmp/lsm-attack
mkdir -p "$dir"
echo "top secret" >/tmp/secret
cp /usr/bin/id /tmp/tool
cat >"$dir/policy.yaml" <<'POLICY'
apiVersion: forgeone.dev/v1alpha1
kind: Policy
metadata: {name: attack}
spec:
  mode: enforce
  selfProtect: true
  defaults: {exec: allow, file.read: allow, file.write: allow, net.connect: allow, net.bind: allow, net.sendto: allow, syscall: allow}
  rules:
    - {name: no-secret, op: file.read, action: deny, paths: [/tmp/secret]}
    - {name: no-tool, op: exec, action: deny, paths: [/tmp/tool]}
POLICY
forge agent run --policy "$dir/policy.yaml" --govern attack --socket "$dir/agent.sock" \
    --data-dir "$dir/data" >"$dir/agent.log" 2>&1 &
agent=$!
i=0
until [ -S "$dir/agent.sock" ] || [ $i -ge 120 ]; do sleep 0.5; i=$((i + 1)); done
if [ ! -S "$dir/agent.sock" ]; then
    echo "the agent did not start:"; cat "$dir/agent.log"; exit 2
fi
forge doctor | grep -i -E "lsm|backend" || true

# Inside the governed cgroup from here on.
sh -c '
echo $$ >/sys/fs/cgroup/attack/cgroup.procs || exit 2
got=0
try() {
    what=$1; shift
    if "$@" >/dev/null 2>&1; then echo "NOT DENIED: $what"; got=1; else echo "denied: $what"; fi
}
cd /tmp
ln -s /tmp/secret /tmp/link-to-secret
ln /tmp/secret /tmp/hardlink-to-secret 2>/dev/null
mkdir -p /tmp/a
cp /tmp/tool /tmp/renamed-tool
try "cat /tmp/secret" cat /tmp/secret
try "cat through a symlink" cat /tmp/link-to-secret
try "cat through a .. path" cat /tmp/a/../secret
try "cat through a hard link" cat /tmp/hardlink-to-secret
try "exec /tmp/tool" /tmp/tool
try "exec through a symlink" sh -c "ln -s /tmp/tool /tmp/l && /tmp/l"
try "kill -9 the agent" kill -9 '"$agent"'
echo "a copy under another name is another file: /tmp/renamed-tool runs ($(/tmp/renamed-tool -u))"
exit $got
'
rc=$?
echo "--- the agent saw:"
grep -E "denied|deny" "$dir/agent.log" | head -20
kill "$agent" 2>/dev/null
exit $rc
