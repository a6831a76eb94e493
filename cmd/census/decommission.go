package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/census-metrics/census/distributor"
	"github.com/census-metrics/census/ingester"
	"github.com/census-metrics/census/ring"
)

// decommissionOptions says when an ingester that is told to stop hands its
// data off instead of keeping it for its next start.
type decommissionOptions struct {
	onScaleDown bool
	kubeconfig  string
}

func (o *decommissionOptions) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.onScaleDown, "ingester.decommission-on-scale-down", false, "On SIGTERM, ask the Kubernetes API server whether this pod's ordinal (from --instance.id, the pod's name) is at or above its StatefulSet's spec.replicas: if so the StatefulSet was scaled down, and the ingester hands every series off to its new owners before it exits (needs RBAC get on statefulsets). Otherwise it is a restart: the data stays on the volume for the next start. POST /ingester/decommission starts a hand-off anywhere.")
	fs.StringVar(&o.kubeconfig, "ingester.kubeconfig", "", "Kubeconfig file for --ingester.decommission-on-scale-down; empty means the pod's service account.")
}

// errDecommissioned ends a process whose ingester handed everything off.
var errDecommissioned = errors.New("the ingester was decommissioned")

// scaleDownCheckTimeout bounds how long a stopping ingester asks the API
// server whether it was scaled down. If it cannot tell, it keeps its data:
// a restart loses nothing, and a scale-down that was not recognized leaves
// the data on the retained volume, where scaling up again finds it.
const scaleDownCheckTimeout = 30 * time.Second

// addDecommission adds to life the step that, when the process stops,
// decommissions the ingester if it was scaled down, or waits for a
// decommission already running (POST /ingester/decommission, or one
// resumed at start). A decommission that finishes stops the process with
// errDecommissioned.
func addDecommission(life *lifecycle, d *ingester.Decommission, o decommissionOptions, pod string, logger *slog.Logger) {
	life.add("decommission", func(ctx context.Context) error {
		if d.Resume() {
			d.Start()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.Done():
			return errDecommissioned
		}
	}, func() {
		if !d.Started() && o.onScaleDown {
			down, err := podScaledDown(o.kubeconfig, pod, logger)
			switch {
			case err != nil:
				logger.Error("Could not tell whether this ingester was scaled down: stopping as a restart, keeping its data on the volume", "err", err)
			case down:
				logger.Info("This pod's StatefulSet was scaled down below it: decommissioning", "pod", pod)
				d.Start()
			default:
				logger.Info("Stopping as a restart: the data stays on the volume", "pod", pod)
			}
		}
		if d.Started() {
			<-d.Done()
		}
	})
}

// handOffOwners finds a series' new owners as distributors find its
// replicas: the ring skips LEAVING instances, this one included.
func handOffOwners(r *ring.Ring) ingester.OwnersFunc {
	var descs []ring.InstanceDesc
	return func(ls labels.Labels, buf []ingester.Target) ([]ingester.Target, error) {
		var err error
		descs, err = r.Get(distributor.Token(distributor.SeriesHash(ls)), descs)
		if err != nil {
			return buf, err
		}
		for _, d := range descs {
			buf = append(buf, ingester.Target{ID: d.ID, Addr: d.Addr})
		}
		return buf, nil
	}
}

// podScaledDown asks the API server, retrying for up to
// scaleDownCheckTimeout, whether pod's ordinal is at or above its
// StatefulSet's replicas.
func podScaledDown(kubeconfig, pod string, logger *slog.Logger) (bool, error) {
	set, ordinal, err := statefulSetOrdinal(pod)
	if err != nil {
		return false, err
	}
	cfg, namespace, err := kubeClientConfig(kubeconfig)
	if err != nil {
		return false, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), scaleDownCheckTimeout)
	defer cancel()
	for backoff := 250 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		sts, err := client.AppsV1().StatefulSets(namespace).Get(ctx, set, metav1.GetOptions{})
		if err == nil {
			replicas := int32(1)
			if sts.Spec.Replicas != nil {
				replicas = *sts.Spec.Replicas
			}
			return int32(ordinal) >= replicas, nil
		}
		logger.Warn("Could not read this ingester's StatefulSet", "statefulset", set, "namespace", namespace, "err", err)
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("read StatefulSet %s/%s: %w", namespace, set, err)
		case <-time.After(backoff):
		}
	}
}

// statefulSetOrdinal splits the name of a StatefulSet's pod, <set>-<ordinal>.
func statefulSetOrdinal(pod string) (set string, ordinal int, err error) {
	i := strings.LastIndexByte(pod, '-')
	if i > 0 {
		if n, err := strconv.Atoi(pod[i+1:]); err == nil && n >= 0 {
			return pod[:i], n, nil
		}
	}
	return "", 0, fmt.Errorf("instance %q is not named as a StatefulSet's pod, <statefulset>-<ordinal>: set --instance.id to the pod's name", pod)
}

// kubeClientConfig returns the configuration to reach the API server and
// the namespace of this pod: POD_NAMESPACE if set (the manifests set it
// from the downward API), else the service account's or the kubeconfig's.
func kubeClientConfig(kubeconfig string) (*rest.Config, string, error) {
	namespace := os.Getenv("POD_NAMESPACE")
	if kubeconfig != "" {
		loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}, &clientcmd.ConfigOverrides{})
		cfg, err := loader.ClientConfig()
		if err != nil {
			return nil, "", fmt.Errorf("read --ingester.kubeconfig: %w", err)
		}
		if namespace == "" {
			if namespace, _, err = loader.Namespace(); err != nil {
				return nil, "", err
			}
		}
		return cfg, namespace, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, "", fmt.Errorf("reach the API server from the pod (or set --ingester.kubeconfig): %w", err)
	}
	if namespace == "" {
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, "", fmt.Errorf("find this pod's namespace (set POD_NAMESPACE): %w", err)
		}
		namespace = strings.TrimSpace(string(b))
	}
	return cfg, namespace, nil
}
