package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// fakeKubeletConfig is what a test sets for its fake kubelet.
type fakeKubeletConfig struct {
	// namespace is where it runs pods; pods elsewhere are not its own.
	namespace string
	// nodes are the Nodes it creates, Ready, and binds pods to in turn.
	nodes []string
	// join are the gossip addresses every container's --memberlist.join
	// is rewritten to: the test has no DNS for the headless Service the
	// manifests name.
	join []string
	// flags come after each container's own args.
	flags []string
	// maxGrace bounds a pod's termination grace period, which is sized for
	// production (minutes), so that a stuck process fails the test in time.
	maxGrace time.Duration
}

// fakeKubelet is the scheduler and the kubelet of a test's API server,
// which has neither: it binds every unscheduled pod of its namespace to one
// of its nodes, and runs each bound pod's one container as a Census process
// (a re-run of the test binary, as startProcess does) with the container's
// args and env, a folder per PersistentVolumeClaim as its volume (so a pod
// re-created with the same name finds its data, as on a real cluster), and
// loopback addresses picked by the process. It reports the pod Running and
// its readiness probe's answer in the pod's status; when the pod is being
// deleted it stops the process with SIGTERM, then SIGKILL after the grace
// period, and only then removes the pod, as a kubelet does.
type fakeKubelet struct {
	t      testing.TB
	cfg    fakeKubeletConfig
	client kubernetes.Interface
	root   string // Volumes are folders under it.

	ctx    context.Context // Ends when the test does; every worker returns then.
	cancel context.CancelFunc
	wg     sync.WaitGroup // The pod workers.

	mtx          sync.Mutex // Guards the fields below.
	workers      map[types.UID]*podWorker
	nextNode     int
	procs        []*process // Every process started, for the logs of a failed test.
	terminations []podTermination
}

// podTermination is how the process of a deleted pod ended.
type podTermination struct {
	pod      string
	exitCode int           // -1 if a signal ended it.
	killed   bool          // SIGKILL after the grace period.
	took     time.Duration // From SIGTERM to the exit.
}

// podWorker owns one pod, by UID, and its process, like the kubelet's pod
// workers: the informer hands it the newest state of the pod and the
// worker alone acts on it, so that the pods' processes start and stop in
// parallel.
type podWorker struct {
	updates chan podUpdate // Capacity 1: only the newest state matters.
	done    bool           // The worker returned; guarded by fakeKubelet.mtx.
}

// podUpdate is the newest state of a pod; gone means it was removed from
// the API server.
type podUpdate struct {
	pod  *corev1.Pod
	gone bool
}

// startFakeKubelet creates cfg.nodes and serves the pods of cfg.namespace
// until the test ends, when it kills every process it runs.
func startFakeKubelet(t testing.TB, client kubernetes.Interface, cfg fakeKubeletConfig) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{t: t, cfg: cfg, client: client, root: t.TempDir(), workers: map[types.UID]*podWorker{}}
	k.ctx, k.cancel = context.WithCancel(context.Background())
	for _, name := range cfg.nodes {
		node, err := client.CoreV1().Nodes().Create(k.ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create node %s: %v", name, err)
		}
		node.Status = corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
				LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		}
		if _, err := client.CoreV1().Nodes().UpdateStatus(k.ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("report node %s Ready: %v", name, err)
		}
	}

	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(cfg.namespace))
	pods := factory.Core().V1().Pods().Informer()
	_, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.dispatch(obj.(*corev1.Pod), false) },
		UpdateFunc: func(_, obj any) { k.dispatch(obj.(*corev1.Pod), false) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				k.dispatch(pod, true)
			}
		},
	})
	if err != nil {
		t.Fatalf("watch pods: %v", err)
	}
	factory.Start(k.ctx.Done())
	t.Cleanup(func() {
		k.cancel()
		factory.Shutdown()
		k.wg.Wait()
		if t.Failed() {
			for _, p := range k.procs {
				t.Logf("--- log of pod %s ---\n%s", p.name, p.log.String())
			}
		}
	})
	return k
}

// dispatch hands the newest state of pod to its worker, starting one for
// a pod it has not seen.
func (k *fakeKubelet) dispatch(pod *corev1.Pod, gone bool) {
	k.mtx.Lock()
	defer k.mtx.Unlock()
	w := k.workers[pod.UID]
	if w == nil {
		if gone {
			return
		}
		w = &podWorker{updates: make(chan podUpdate, 1)}
		k.workers[pod.UID] = w
		k.wg.Go(func() { k.runPod(w) })
	}
	if w.done {
		return
	}
	select {
	case <-w.updates:
	default:
	}
	w.updates <- podUpdate{pod: pod, gone: gone}
}

// runPod is the worker of one pod: it binds the pod, runs its container,
// reports its readiness and stops it, until the pod is gone or the test
// ends.
func (k *fakeKubelet) runPod(w *podWorker) {
	defer func() {
		k.mtx.Lock()
		w.done = true
		k.mtx.Unlock()
	}()
	var (
		pod      *corev1.Pod
		proc     *process
		exited   <-chan struct{} // proc.done while it runs.
		bound    bool
		ready    bool
		probe    = time.NewTicker(250 * time.Millisecond)
		probeURL string
	)
	defer probe.Stop()
	defer func() {
		if proc != nil {
			proc.kill()
		}
	}()
	for {
		select {
		case <-k.ctx.Done():
			return
		case u := <-w.updates:
			if u.gone {
				// Removed without us: a forced delete kills at once.
				return
			}
			pod = u.pod
		case <-exited:
			k.t.Errorf("pod %s: its process exited unexpectedly (code %d)", pod.Name, proc.cmd.ProcessState.ExitCode())
			exited, ready = nil, false
			k.patchStatus(pod, proc, false)
			continue
		case <-probe.C:
			if exited == nil || probeURL == "" {
				continue
			}
			_, err := proc.get(probeURL)
			if (err == nil) != ready {
				ready = err == nil
				k.patchStatus(pod, proc, ready)
			}
			continue
		}

		switch {
		case pod.DeletionTimestamp != nil:
			if pod.Spec.NodeName != "" {
				k.terminate(pod, proc)
				proc = nil
			}
			k.remove(pod)
			return
		case pod.Spec.NodeName == "":
			if !bound {
				k.bind(pod)
				bound = true
			}
		case proc == nil:
			var err error
			proc, probeURL, err = k.startContainer(pod)
			if err != nil {
				k.t.Errorf("pod %s: %v", pod.Name, err)
				continue
			}
			exited = proc.done
			if probeURL == "" {
				ready = true
			}
			k.patchStatus(pod, proc, ready)
		}
	}
}

// bind schedules pod onto the next node, as the scheduler would, with a
// Binding: the API server sets spec.nodeName from it.
func (k *fakeKubelet) bind(pod *corev1.Pod) {
	k.mtx.Lock()
	node := k.cfg.nodes[k.nextNode%len(k.cfg.nodes)]
	k.nextNode++
	k.mtx.Unlock()
	err := k.client.CoreV1().Pods(pod.Namespace).Bind(k.ctx, &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}, metav1.CreateOptions{})
	if err != nil && k.ctx.Err() == nil {
		k.t.Errorf("bind pod %s to %s: %v", pod.Name, node, err)
	}
}

// startContainer runs the one container of pod and returns its process
// and the path its readiness probe GETs over HTTP, empty without a probe.
func (k *fakeKubelet) startContainer(pod *corev1.Pod) (*process, string, error) {
	if len(pod.Spec.Containers) != 1 {
		return nil, "", fmt.Errorf("%d containers, the fake kubelet runs one", len(pod.Spec.Containers))
	}
	c := &pod.Spec.Containers[0]
	env, args, err := k.command(pod, c)
	if err != nil {
		return nil, "", err
	}
	probe := ""
	if rp := c.ReadinessProbe; rp != nil {
		if rp.HTTPGet == nil || rp.HTTPGet.Port.String() != "http" {
			return nil, "", fmt.Errorf("container %s: the fake kubelet probes only httpGet on the port named http", c.Name)
		}
		probe = rp.HTTPGet.Path
	}
	proc, err := launchProcess(k.t, pod.Name, env, args)
	if err != nil {
		return nil, "", err
	}
	k.mtx.Lock()
	k.procs = append(k.procs, proc)
	k.mtx.Unlock()
	return proc, probe, nil
}

// portFlags are the Census flags that bind each named container port;
// the fake kubelet points them at loopback port 0, so that processes of
// many pods share one machine.
var portFlags = map[string]string{
	"http":   "--http.listen-address",
	"grpc":   "--grpc.listen-address",
	"gossip": "--memberlist.bind-address",
}

// envVarRef is a $(VAR) reference in a container's args, or the $$ that
// escapes a dollar, as Kubernetes expands them.
var envVarRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// command returns the environment and the args that the fake kubelet runs
// container c of pod with: the container's env and args, with $(VAR)
// expanded as Kubernetes does, each volume's mount path in a flag's value
// replaced by the folder of the volume, --memberlist.join and the listen
// addresses replaced (see fakeKubeletConfig.join and portFlags), and then
// cfg.flags.
func (k *fakeKubelet) command(pod *corev1.Pod, c *corev1.Container) (env, args []string, err error) {
	if len(c.Command) > 0 {
		return nil, nil, fmt.Errorf("container %s: a command replaces the census entrypoint; the fake kubelet runs args only", c.Name)
	}
	vars := map[string]string{}
	expand := func(s string) string {
		return envVarRef.ReplaceAllStringFunc(s, func(ref string) string {
			if ref == "$$" {
				return "$"
			}
			if v, ok := vars[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref // Kubernetes leaves an undefined reference as it is.
		})
	}
	for _, e := range c.Env {
		v := expand(e.Value)
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				return nil, nil, fmt.Errorf("container %s: env %s: the fake kubelet resolves only fieldRef", c.Name, e.Name)
			}
			switch path := e.ValueFrom.FieldRef.FieldPath; path {
			case "metadata.name":
				v = pod.Name
			case "metadata.namespace":
				v = pod.Namespace
			case "spec.nodeName":
				v = pod.Spec.NodeName
			case "status.podIP", "status.hostIP":
				v = "127.0.0.1"
			default:
				return nil, nil, fmt.Errorf("container %s: env %s: fieldRef %s is not supported", c.Name, e.Name, path)
			}
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}

	mounts := map[string]string{} // Mount path -> folder.
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(pod.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return nil, nil, fmt.Errorf("container %s mounts volume %s, which the pod lacks", c.Name, m.Name)
		}
		var dir string
		switch v := pod.Spec.Volumes[i]; {
		case v.PersistentVolumeClaim != nil:
			dir = filepath.Join(k.root, "pvc", v.PersistentVolumeClaim.ClaimName)
		case v.EmptyDir != nil:
			dir = filepath.Join(k.root, "pod", string(pod.UID), v.Name)
		default:
			return nil, nil, fmt.Errorf("volume %s: the fake kubelet has only persistentVolumeClaim and emptyDir volumes", v.Name)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, nil, err
		}
		mounts[filepath.Clean(m.MountPath)] = dir
	}

	replaced := []string{"--memberlist.join"}
	for _, p := range c.Ports {
		if f, ok := portFlags[p.Name]; ok {
			replaced = append(replaced, f)
		}
	}
	for i := 0; i < len(c.Args); i++ {
		arg := expand(c.Args[i])
		name, value, inline := strings.Cut(arg, "=")
		if slices.Contains(replaced, name) {
			if !inline {
				i++ // The value is the next arg.
			}
			continue
		}
		if inline {
			for path, dir := range mounts {
				if value == path || strings.HasPrefix(value, path+"/") {
					arg = name + "=" + dir + strings.TrimPrefix(value, path)
				}
			}
		}
		args = append(args, arg)
	}
	for _, f := range replaced[1:] {
		args = append(args, f+"=127.0.0.1:0")
	}
	for _, j := range k.cfg.join {
		args = append(args, "--memberlist.join="+j)
	}
	return env, append(args, k.cfg.flags...), nil
}

// patchStatus reports pod Running with proc's readiness, as the kubelet's
// status manager does, through the status subresource.
func (k *fakeKubelet) patchStatus(pod *corev1.Pod, proc *process, ready bool) {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	now := metav1.Now()
	cs := corev1.ContainerStatus{Name: pod.Spec.Containers[0].Name, Image: pod.Spec.Containers[0].Image, Ready: ready}
	select {
	case <-proc.done:
		cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(proc.cmd.ProcessState.ExitCode()), FinishedAt: now}
	default:
		started := true
		cs.Started = &started
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: now}
	}
	status := corev1.PodStatus{
		Phase:  corev1.PodRunning,
		HostIP: "127.0.0.1", HostIPs: []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: cond, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: cond, LastTransitionTime: now},
		},
		ContainerStatuses: []corev1.ContainerStatus{cs},
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		k.t.Errorf("BUG: encode the status of pod %s: %v", pod.Name, err)
		return
	}
	_, err = k.client.CoreV1().Pods(pod.Namespace).Patch(k.ctx, pod.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	// A pod deleted meanwhile has no status to report.
	if err != nil && !apierrors.IsNotFound(err) && k.ctx.Err() == nil {
		k.t.Errorf("report the status of pod %s: %v", pod.Name, err)
	}
}

// terminate stops proc, the process of pod being deleted: SIGTERM, then
// SIGKILL once the pod's grace period (at most cfg.maxGrace) is over.
func (k *fakeKubelet) terminate(pod *corev1.Pod, proc *process) {
	if proc == nil {
		return
	}
	grace := k.cfg.maxGrace
	if s := pod.DeletionGracePeriodSeconds; s != nil && time.Duration(*s)*time.Second < grace {
		grace = time.Duration(*s) * time.Second
	}
	start := time.Now()
	_ = proc.cmd.Process.Signal(syscall.SIGTERM)
	term := podTermination{pod: pod.Name}
	select {
	case <-proc.done:
	case <-time.After(grace):
		term.killed = true
		proc.kill()
	case <-k.ctx.Done():
		proc.kill()
		return
	}
	term.took = time.Since(start)
	term.exitCode = proc.cmd.ProcessState.ExitCode()
	k.mtx.Lock()
	k.terminations = append(k.terminations, term)
	k.mtx.Unlock()
}

// remove deletes pod at once, its process being gone, as the kubelet
// does to finish a graceful deletion. The UID precondition spares a pod
// re-created with the same name meanwhile.
func (k *fakeKubelet) remove(pod *corev1.Pod) {
	zero := int64(0)
	err := k.client.CoreV1().Pods(pod.Namespace).Delete(k.ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && k.ctx.Err() == nil {
		k.t.Errorf("remove pod %s: %v", pod.Name, err)
	}
}

// stopped returns how the processes of the pods deleted so far ended.
func (k *fakeKubelet) stopped() []podTermination {
	k.mtx.Lock()
	defer k.mtx.Unlock()
	return slices.Clone(k.terminations)
}

// TestFakeKubelet_Command pins how the fake kubelet turns a container
// into the args of a process on the test's machine.
func TestFakeKubelet_Command(t *testing.T) {
	k := &fakeKubelet{root: t.TempDir(), cfg: fakeKubeletConfig{join: []string{"127.0.0.1:1", "127.0.0.1:2"}, flags: []string{"--test.flag"}}}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "census-ingester-1", Namespace: "prod", UID: "uid-1"},
		Spec: corev1.PodSpec{NodeName: "node-a", Volumes: []corev1.Volume{
			{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-census-ingester-1"}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}},
	}
	fieldRef := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}
	}
	c := &corev1.Container{
		Args: []string{
			"ingester", "--instance.id=$(POD_NAME)", "--memberlist.join=census-gossip.$(POD_NAMESPACE).svc:7946",
			"--memberlist.join", "other:7946", "--storage.path=/data", "--cache=/tmp/x", "--label=$(UNDEFINED)", "--price=$$(POD_NAME)",
			"--http.listen-address=:8080",
		},
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: fieldRef("metadata.name")},
			{Name: "POD_NAMESPACE", ValueFrom: fieldRef("metadata.namespace")},
			{Name: "GREETING", Value: "hello $(POD_NAME)"},
		},
		Ports:        []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "gossip", ContainerPort: 7946}},
		VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}, {Name: "tmp", MountPath: "/tmp/"}},
	}
	env, args, err := k.command(pod, c)
	require.NoError(t, err)
	require.Equal(t, []string{"POD_NAME=census-ingester-1", "POD_NAMESPACE=prod", "GREETING=hello census-ingester-1"}, env)
	require.Equal(t, []string{
		"ingester", "--instance.id=census-ingester-1",
		"--storage.path=" + filepath.Join(k.root, "pvc", "data-census-ingester-1"),
		"--cache=" + filepath.Join(k.root, "pod", "uid-1", "tmp") + "/x",
		"--label=$(UNDEFINED)", "--price=$(POD_NAME)",
		"--http.listen-address=127.0.0.1:0", "--memberlist.bind-address=127.0.0.1:0",
		"--memberlist.join=127.0.0.1:1", "--memberlist.join=127.0.0.1:2", "--test.flag",
	}, args)
	require.DirExists(t, filepath.Join(k.root, "pvc", "data-census-ingester-1"))

	c.Command = []string{"/bin/sh"}
	_, _, err = k.command(pod, c)
	require.ErrorContains(t, err, "a command replaces the census entrypoint")
}
