#!/usr/bin/env bash
# Run PTMRec's stages as RayJobs on the "ptmrec" RayCluster, one after another, stopping at the first failure:
#
#   cluster/kuberay/run-stages.sh                  # prepare → stage1 → stage2 → evaluate
#   cluster/kuberay/run-stages.sh stage2 evaluate  # only these, in this order
#
# Each RayJob is deleted first if it exists (a finished RayJob is never rerun), applied from
# rayjob-<stage>.yaml, and polled until its Ray job ends. Follow a stage's output meanwhile with
# `kubectl logs -f job/ptmrec-<stage>`. Uses kubectl's current context and namespace.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if (( $# )); then stages=("$@"); else stages=(prepare stage1 stage2 evaluate); fi

for stage in "${stages[@]}"; do
    name=ptmrec-$stage
    kubectl delete rayjob "$name" --ignore-not-found --wait=true
    kubectl apply -f "$here/rayjob-$stage.yaml"
    echo "== $name submitted (output: kubectl logs -f job/$name)"
    while :; do
        status=$(kubectl get rayjob "$name" -o jsonpath='{.status.jobStatus}')
        deployment=$(kubectl get rayjob "$name" -o jsonpath='{.status.jobDeploymentStatus}')
        case "$status" in
            SUCCEEDED) echo "== $name succeeded"; break ;;
            FAILED | STOPPED)
                echo "== $name: Ray job $status; later stages were not submitted" >&2
                exit 1 ;;
        esac
        if [[ $deployment == Failed ]]; then  # e.g. the submitter could not reach the cluster
            echo "== $name: RayJob failed before its Ray job ended (kubectl describe rayjob $name)" >&2
            exit 1
        fi
        sleep 20
    done
done
