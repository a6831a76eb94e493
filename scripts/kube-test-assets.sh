#!/usr/bin/env bash
# kube-test-assets.sh builds the real control plane the Kubernetes tests run
# against (etcd, kube-apiserver and kubectl, as controller-runtime's envtest
# expects them, plus kube-controller-manager, whose StatefulSet controller
# the scale tests need) from the Go module proxy alone, into a cache folder
# outside the repository, and prints that folder on stdout. When the four
# binaries are there already it builds nothing, so calling it before every
# test run costs nothing after the first. Cold it takes about 20 CPU-minutes
# (kube-controller-manager is the largest): 10 minutes on 2 idle cores, 30
# on busy ones.
#
# The folder is $CENSUS_KUBE_ASSETS, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/census/kube-assets-<versions>. Point
# KUBEBUILDER_ASSETS at it to run the tests by hand:
#
#   KUBEBUILDER_ASSETS=$(scripts/kube-test-assets.sh) go test ./cmd/census -run Kubernetes
#
# Each binary builds in a throwaway module: etcd's main package is the root
# of go.etcd.io/etcd/server/v3; k8s.io/kubernetes is not meant to be
# required as a module, so its staging modules (which its go.mod replaces
# with local folders) are replaced with their published versions.
set -euo pipefail

ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.36.3
STAGING_VERSION=v0.36.3

dir=${CENSUS_KUBE_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/census/kube-assets-${KUBE_VERSION}-etcd-${ETCD_VERSION}}
GO=${GO:-go}

have_all() {
	[[ -x "$dir/etcd" && -x "$dir/kube-apiserver" && -x "$dir/kubectl" && -x "$dir/kube-controller-manager" ]]
}

if have_all; then
	echo "$dir"
	exit 0
fi

mkdir -p "$dir"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
# The throwaway modules must not see this repository's go.work or flags.
export GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local

if [[ ! -x "$dir/etcd" ]]; then
	echo "kube-test-assets: building etcd $ETCD_VERSION into $dir" >&2
	mkdir -p "$work/etcd"
	(
		cd "$work/etcd"
		"$GO" mod init census.local/etcd-build >/dev/null 2>&1
		"$GO" get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
		"$GO" build -trimpath -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3
		mv "$dir/etcd.tmp" "$dir/etcd"
	)
fi

kube_bins=(kube-apiserver kubectl kube-controller-manager)
missing=()
for b in "${kube_bins[@]}"; do
	[[ -x "$dir/$b" ]] || missing+=("$b")
done

if ((${#missing[@]})); then
	echo "kube-test-assets: building ${missing[*]} $KUBE_VERSION into $dir" >&2
	mkdir -p "$work/kube"
	(
		cd "$work/kube"
		"$GO" mod init census.local/kube-build >/dev/null 2>&1
		# Read which staging modules k8s.io/kubernetes replaces locally.
		mod=$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
		[[ -n "$mod" ]] || { echo "kube-test-assets: cannot find the go.mod of k8s.io/kubernetes@$KUBE_VERSION" >&2; exit 1; }
		"$GO" mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
		staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$mod")
		[[ -n "$staging" ]] || { echo "kube-test-assets: no staging replacements in $mod" >&2; exit 1; }
		for m in $staging; do
			"$GO" mod edit -replace="$m=$m@$STAGING_VERSION"
		done
		# Name the version: without it go get would upgrade k8s.io/kubernetes.
		pkgs=()
		for b in "${kube_bins[@]}"; do
			pkgs+=("k8s.io/kubernetes/cmd/$b@$KUBE_VERSION")
		done
		"$GO" get "${pkgs[@]}" >&2
		# Build only what is missing, each to a temporary name first, so an
		# interrupted build never leaves a binary have_all would accept.
		for b in "${missing[@]}"; do
			"$GO" build -trimpath -o "$dir/$b.tmp" "k8s.io/kubernetes/cmd/$b"
			mv "$dir/$b.tmp" "$dir/$b"
		done
	)
fi

have_all || { echo "kube-test-assets: binaries missing in $dir after the build" >&2; exit 1; }
echo "$dir"
