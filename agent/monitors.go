package agent

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/util/strutil"
	"go.yaml.in/yaml/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// The Prometheus Operator's resources the agent reads.
var (
	monitoringGroupVersion = schema.GroupVersion{Group: "monitoring.coreos.com", Version: "v1"}
	serviceMonitorsGVR     = monitoringGroupVersion.WithResource("servicemonitors")
	podMonitorsGVR         = monitoringGroupVersion.WithResource("podmonitors")
)

// serviceMonitor and podMonitor hold the fields of the Operator's
// resources (monitoring.coreos.com/v1) that become scrape configuration;
// unknown fields are ignored, so any Operator version's YAML reads.
type serviceMonitor struct {
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel          string               `json:"jobLabel"`
		TargetLabels      []string             `json:"targetLabels"`
		PodTargetLabels   []string             `json:"podTargetLabels"`
		Endpoints         []monitorEndpoint    `json:"endpoints"`
		Selector          metav1.LabelSelector `json:"selector"`
		NamespaceSelector namespaceSelector    `json:"namespaceSelector"`
		SampleLimit       uint64               `json:"sampleLimit"`
	} `json:"spec"`
}

type podMonitor struct {
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		JobLabel            string               `json:"jobLabel"`
		PodTargetLabels     []string             `json:"podTargetLabels"`
		PodMetricsEndpoints []monitorEndpoint    `json:"podMetricsEndpoints"`
		Selector            metav1.LabelSelector `json:"selector"`
		NamespaceSelector   namespaceSelector    `json:"namespaceSelector"`
		SampleLimit         uint64               `json:"sampleLimit"`
	} `json:"spec"`
}

type namespaceSelector struct {
	Any        bool     `json:"any"`
	MatchNames []string `json:"matchNames"`
}

// monitorEndpoint is a ServiceMonitor's endpoint or a PodMonitor's
// podMetricsEndpoint: port names a service port (ServiceMonitor) or a
// container port (PodMonitor).
type monitorEndpoint struct {
	Port              string               `json:"port"`
	PortNumber        int32                `json:"portNumber"`
	TargetPort        *intstr.IntOrString  `json:"targetPort"`
	Path              string               `json:"path"`
	Scheme            string               `json:"scheme"`
	Params            map[string][]string  `json:"params"`
	Interval          string               `json:"interval"`
	ScrapeTimeout     string               `json:"scrapeTimeout"`
	HonorLabels       bool                 `json:"honorLabels"`
	HonorTimestamps   *bool                `json:"honorTimestamps"`
	Relabelings       []operatorRelabeling `json:"relabelings"`
	MetricRelabelings []operatorRelabeling `json:"metricRelabelings"`
}

// operatorRelabeling is the Operator's spelling of a relabel rule.
type operatorRelabeling struct {
	SourceLabels []string `json:"sourceLabels"`
	Separator    *string  `json:"separator"`
	TargetLabel  string   `json:"targetLabel"`
	Regex        string   `json:"regex"`
	Modulus      uint64   `json:"modulus"`
	Replacement  *string  `json:"replacement"`
	Action       string   `json:"action"`
}

// relabelRule is one relabel rule in Prometheus' YAML.
type relabelRule = yaml.MapSlice

func rule(kv ...any) relabelRule {
	r := relabelRule{}
	for i := 0; i < len(kv); i += 2 {
		r = append(r, yaml.MapItem{Key: kv[i], Value: kv[i+1]})
	}
	return r
}

func (o operatorRelabeling) toYAML() relabelRule {
	r := relabelRule{}
	if len(o.SourceLabels) > 0 {
		r = append(r, yaml.MapItem{Key: "source_labels", Value: o.SourceLabels})
	}
	if o.Separator != nil {
		r = append(r, yaml.MapItem{Key: "separator", Value: *o.Separator})
	}
	if o.TargetLabel != "" {
		r = append(r, yaml.MapItem{Key: "target_label", Value: o.TargetLabel})
	}
	if o.Regex != "" {
		r = append(r, yaml.MapItem{Key: "regex", Value: o.Regex})
	}
	if o.Modulus != 0 {
		r = append(r, yaml.MapItem{Key: "modulus", Value: o.Modulus})
	}
	if o.Replacement != nil {
		r = append(r, yaml.MapItem{Key: "replacement", Value: *o.Replacement})
	}
	if o.Action != "" {
		r = append(r, yaml.MapItem{Key: "action", Value: strings.ToLower(o.Action)})
	}
	return r
}

// selectorRelabels keeps the targets whose object (service or pod) labels
// match sel, as the Operator writes it.
func selectorRelabels(kind string, sel metav1.LabelSelector) []relabelRule {
	var out []relabelRule
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, rule(
			"source_labels", []string{"__meta_kubernetes_" + kind + "_label_" + strutil.SanitizeLabelName(k), "__meta_kubernetes_" + kind + "_labelpresent_" + strutil.SanitizeLabelName(k)},
			"regex", "("+regexp.QuoteMeta(sel.MatchLabels[k])+");true",
			"action", "keep"))
	}
	for _, e := range sel.MatchExpressions {
		label := "__meta_kubernetes_" + kind + "_label_" + strutil.SanitizeLabelName(e.Key)
		present := "__meta_kubernetes_" + kind + "_labelpresent_" + strutil.SanitizeLabelName(e.Key)
		values := make([]string, len(e.Values))
		for i, v := range e.Values {
			values[i] = regexp.QuoteMeta(v)
		}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			out = append(out, rule("source_labels", []string{label, present}, "regex", "("+strings.Join(values, "|")+");true", "action", "keep"))
		case metav1.LabelSelectorOpNotIn:
			out = append(out, rule("source_labels", []string{label, present}, "regex", "("+strings.Join(values, "|")+");true", "action", "drop"))
		case metav1.LabelSelectorOpExists:
			out = append(out, rule("source_labels", []string{present}, "regex", "true", "action", "keep"))
		case metav1.LabelSelectorOpDoesNotExist:
			out = append(out, rule("source_labels", []string{present}, "regex", "true", "action", "drop"))
		}
	}
	return out
}

// namespaces returns the namespaces a monitor watches: its own unless its
// namespaceSelector says otherwise; nil means every namespace.
func namespaces(own string, sel namespaceSelector) []string {
	switch {
	case sel.Any:
		return nil
	case len(sel.MatchNames) > 0:
		return sel.MatchNames
	}
	return []string{own}
}

// monitorJob builds the scrape configuration shared by both kinds of
// monitor: discovery, endpoint settings and relabel rules.
func monitorJob(name, role string, nss []string, kubeconfig string, ep monitorEndpoint, sampleLimit uint64, relabels []relabelRule) yaml.MapSlice {
	sd := yaml.MapSlice{{Key: "role", Value: role}}
	if kubeconfig != "" {
		sd = append(sd, yaml.MapItem{Key: "kubeconfig_file", Value: kubeconfig})
	}
	if nss != nil {
		sd = append(sd, yaml.MapItem{Key: "namespaces", Value: yaml.MapSlice{{Key: "names", Value: nss}}})
	}
	job := yaml.MapSlice{
		{Key: "job_name", Value: name},
		{Key: "honor_labels", Value: ep.HonorLabels},
		{Key: "kubernetes_sd_configs", Value: []yaml.MapSlice{sd}},
	}
	if ep.HonorTimestamps != nil {
		job = append(job, yaml.MapItem{Key: "honor_timestamps", Value: *ep.HonorTimestamps})
	}
	if ep.Interval != "" {
		job = append(job, yaml.MapItem{Key: "scrape_interval", Value: ep.Interval})
	}
	if ep.ScrapeTimeout != "" {
		job = append(job, yaml.MapItem{Key: "scrape_timeout", Value: ep.ScrapeTimeout})
	}
	if ep.Path != "" {
		job = append(job, yaml.MapItem{Key: "metrics_path", Value: ep.Path})
	}
	if ep.Scheme != "" {
		job = append(job, yaml.MapItem{Key: "scheme", Value: strings.ToLower(ep.Scheme)})
	}
	if len(ep.Params) > 0 {
		job = append(job, yaml.MapItem{Key: "params", Value: ep.Params})
	}
	if sampleLimit > 0 {
		job = append(job, yaml.MapItem{Key: "sample_limit", Value: sampleLimit})
	}
	for _, r := range ep.Relabelings {
		relabels = append(relabels, r.toYAML())
	}
	job = append(job, yaml.MapItem{Key: "relabel_configs", Value: relabels})
	if len(ep.MetricRelabelings) > 0 {
		var mr []relabelRule
		for _, r := range ep.MetricRelabelings {
			mr = append(mr, r.toYAML())
		}
		job = append(job, yaml.MapItem{Key: "metric_relabel_configs", Value: mr})
	}
	return job
}

// serviceMonitorJobs turns a ServiceMonitor into one scrape job per
// endpoint, as the Operator does: the service's endpoints (EndpointSlices)
// whose service matches the selector, on the named port, labelled with
// namespace, service, pod, container, node, endpoint and job (the
// service's name, or its jobLabel label).
func serviceMonitorJobs(sm *serviceMonitor, kubeconfig string) []yaml.MapSlice {
	var jobs []yaml.MapSlice
	for i, ep := range sm.Spec.Endpoints {
		rs := selectorRelabels("service", sm.Spec.Selector)
		switch {
		case ep.Port != "":
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_endpointslice_port_name"}, "regex", ep.Port, "action", "keep"))
		case ep.TargetPort != nil && ep.TargetPort.Type == intstr.Int:
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_number"}, "regex", ep.TargetPort.String(), "action", "keep"))
		case ep.TargetPort != nil:
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_name"}, "regex", ep.TargetPort.String(), "action", "keep"))
		}
		rs = append(rs,
			rule("source_labels", []string{"__meta_kubernetes_endpointslice_address_target_kind", "__meta_kubernetes_endpointslice_address_target_name"}, "separator", ";", "regex", "Node;(.*)", "replacement", "${1}", "target_label", "node"),
			rule("source_labels", []string{"__meta_kubernetes_endpointslice_address_target_kind", "__meta_kubernetes_endpointslice_address_target_name"}, "separator", ";", "regex", "Pod;(.*)", "replacement", "${1}", "target_label", "pod"),
			rule("source_labels", []string{"__meta_kubernetes_endpointslice_endpoint_node_name"}, "regex", "(.+)", "target_label", "node"),
			rule("source_labels", []string{"__meta_kubernetes_namespace"}, "target_label", "namespace"),
			rule("source_labels", []string{"__meta_kubernetes_service_name"}, "target_label", "service"),
			rule("source_labels", []string{"__meta_kubernetes_pod_name"}, "target_label", "pod"),
			rule("source_labels", []string{"__meta_kubernetes_pod_container_name"}, "target_label", "container"),
		)
		for _, l := range sm.Spec.TargetLabels {
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_service_label_" + strutil.SanitizeLabelName(l)}, "regex", "(.+)", "target_label", strutil.SanitizeLabelName(l)))
		}
		for _, l := range sm.Spec.PodTargetLabels {
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_label_" + strutil.SanitizeLabelName(l)}, "regex", "(.+)", "target_label", strutil.SanitizeLabelName(l)))
		}
		rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_service_name"}, "target_label", "job"))
		if sm.Spec.JobLabel != "" {
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_service_label_" + strutil.SanitizeLabelName(sm.Spec.JobLabel)}, "regex", "(.+)", "target_label", "job"))
		}
		if ep.Port != "" {
			rs = append(rs, rule("target_label", "endpoint", "replacement", ep.Port))
		} else if ep.TargetPort != nil {
			rs = append(rs, rule("target_label", "endpoint", "replacement", ep.TargetPort.String()))
		}
		name := fmt.Sprintf("serviceMonitor/%s/%s/%d", sm.Namespace, sm.Name, i)
		jobs = append(jobs, monitorJob(name, "endpointslice", namespaces(sm.Namespace, sm.Spec.NamespaceSelector), kubeconfig, ep, sm.Spec.SampleLimit, rs))
	}
	return jobs
}

// podMonitorJobs turns a PodMonitor into one scrape job per
// podMetricsEndpoint, as the Operator does: the running pods matching the
// selector, on the named container port, labelled with namespace, pod,
// container, node, endpoint and job (namespace/name, or its jobLabel
// label).
func podMonitorJobs(pm *podMonitor, kubeconfig string) []yaml.MapSlice {
	var jobs []yaml.MapSlice
	for i, ep := range pm.Spec.PodMetricsEndpoints {
		rs := []relabelRule{rule("source_labels", []string{"__meta_kubernetes_pod_phase"}, "regex", "(Failed|Succeeded)", "action", "drop")}
		rs = append(rs, selectorRelabels("pod", pm.Spec.Selector)...)
		switch {
		case ep.Port != "":
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_name"}, "regex", ep.Port, "action", "keep"))
		case ep.PortNumber != 0:
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_number"}, "regex", fmt.Sprint(ep.PortNumber), "action", "keep"))
		case ep.TargetPort != nil && ep.TargetPort.Type == intstr.Int:
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_number"}, "regex", ep.TargetPort.String(), "action", "keep"))
		case ep.TargetPort != nil:
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_container_port_name"}, "regex", ep.TargetPort.String(), "action", "keep"))
		}
		rs = append(rs,
			rule("source_labels", []string{"__meta_kubernetes_namespace"}, "target_label", "namespace"),
			rule("source_labels", []string{"__meta_kubernetes_pod_container_name"}, "target_label", "container"),
			rule("source_labels", []string{"__meta_kubernetes_pod_name"}, "target_label", "pod"),
			rule("source_labels", []string{"__meta_kubernetes_pod_node_name"}, "target_label", "node"),
		)
		for _, l := range pm.Spec.PodTargetLabels {
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_label_" + strutil.SanitizeLabelName(l)}, "regex", "(.+)", "target_label", strutil.SanitizeLabelName(l)))
		}
		rs = append(rs, rule("target_label", "job", "replacement", pm.Namespace+"/"+pm.Name))
		if pm.Spec.JobLabel != "" {
			rs = append(rs, rule("source_labels", []string{"__meta_kubernetes_pod_label_" + strutil.SanitizeLabelName(pm.Spec.JobLabel)}, "regex", "(.+)", "target_label", "job"))
		}
		switch {
		case ep.Port != "":
			rs = append(rs, rule("target_label", "endpoint", "replacement", ep.Port))
		case ep.PortNumber != 0:
			rs = append(rs, rule("target_label", "endpoint", "replacement", fmt.Sprint(ep.PortNumber)))
		}
		name := fmt.Sprintf("podMonitor/%s/%s/%d", pm.Namespace, pm.Name, i)
		jobs = append(jobs, monitorJob(name, "pod", namespaces(pm.Namespace, pm.Spec.NamespaceSelector), kubeconfig, ep, pm.Spec.SampleLimit, rs))
	}
	return jobs
}

// monitorScrapeConfigs parses and validates generated jobs as Prometheus
// parses a configuration file's scrape_configs.
func monitorScrapeConfigs(jobs []yaml.MapSlice, global config.GlobalConfig) ([]*config.ScrapeConfig, error) {
	out := make([]*config.ScrapeConfig, 0, len(jobs))
	for _, job := range jobs {
		text, err := yaml.Marshal(job)
		if err != nil {
			return nil, err
		}
		sc := &config.ScrapeConfig{}
		if err := yaml.UnmarshalStrict(text, sc); err != nil {
			return nil, fmt.Errorf("job %v: %w", job[0].Value, err)
		}
		if err := sc.Validate(global); err != nil {
			return nil, fmt.Errorf("job %s: %w", sc.JobName, err)
		}
		out = append(out, sc)
	}
	return out, nil
}

// monitorWatcher watches ServiceMonitors and PodMonitors and calls apply
// with the scrape jobs they make whenever one is created, changed or
// deleted.
type monitorWatcher struct {
	kubeconfig string
	logger     *slog.Logger
	apply      func(jobs []yaml.MapSlice)
}

// monitorsSettle is how long the watcher waits after a change for more
// before applying them together.
const monitorsSettle = 500 * time.Millisecond

// run watches until ctx ends. The Operator's resources may not be
// installed: it then looks again every minute.
func (w *monitorWatcher) run(ctx context.Context) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", w.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	disco, err := discovery.NewDiscoveryClientForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes discovery client: %w", err)
	}
	for {
		resources, err := disco.ServerResourcesForGroupVersion(monitoringGroupVersion.String())
		if err == nil && slices.ContainsFunc(resources.APIResources, func(r metav1.APIResource) bool {
			return r.Name == serviceMonitorsGVR.Resource || r.Name == podMonitorsGVR.Resource
		}) {
			break
		}
		w.logger.Debug("No ServiceMonitor or PodMonitor resource in the API server yet", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Minute):
		}
	}
	client, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	factory := dynamicinformer.NewDynamicSharedInformerFactory(client, 10*time.Minute)
	changed := make(chan struct{}, 1)
	notify := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal(changed) },
		UpdateFunc: func(any, any) { signal(changed) },
		DeleteFunc: func(any) { signal(changed) },
	}
	smInf := factory.ForResource(serviceMonitorsGVR).Informer()
	pmInf := factory.ForResource(podMonitorsGVR).Informer()
	if _, err := smInf.AddEventHandler(notify); err != nil {
		return err
	}
	if _, err := pmInf.AddEventHandler(notify); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	factory.WaitForCacheSync(ctx.Done())
	w.logger.Info("Watching ServiceMonitors and PodMonitors")
	signal(changed)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		// Let a burst of changes (kubectl apply -f dir/) settle.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(monitorsSettle):
		}
		w.apply(w.jobs(smInf.GetStore().List(), pmInf.GetStore().List()))
	}
}

// jobs converts every monitor of the informers' stores, in a stable order.
func (w *monitorWatcher) jobs(sms, pms []any) []yaml.MapSlice {
	var jobs []yaml.MapSlice
	for _, obj := range sortByKey(sms) {
		var sm serviceMonitor
		if err := fromUnstructured(obj, &sm); err != nil {
			w.logger.Warn("Cannot read a ServiceMonitor; ignoring it", "err", err)
			continue
		}
		jobs = append(jobs, serviceMonitorJobs(&sm, w.kubeconfig)...)
	}
	for _, obj := range sortByKey(pms) {
		var pm podMonitor
		if err := fromUnstructured(obj, &pm); err != nil {
			w.logger.Warn("Cannot read a PodMonitor; ignoring it", "err", err)
			continue
		}
		jobs = append(jobs, podMonitorJobs(&pm, w.kubeconfig)...)
	}
	return jobs
}

func fromUnstructured(obj any, out any) error {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return fmt.Errorf("unexpected object %T", obj)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		return fmt.Errorf("%s/%s: %w", u.GetNamespace(), u.GetName(), err)
	}
	return nil
}

func sortByKey(objs []any) []any {
	sort.Slice(objs, func(i, j int) bool {
		a, _ := cache.MetaNamespaceKeyFunc(objs[i])
		b, _ := cache.MetaNamespaceKeyFunc(objs[j])
		return a < b
	})
	return objs
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}
