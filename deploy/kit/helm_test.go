package kit

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

const chart = "deploy/helm/wsbridge"

// rendered is one `helm template` output decoded strictly into the
// Kubernetes API types: a field those types do not know fails the decode.
type rendered struct {
	deployments     map[string]*appsv1.Deployment
	services        map[string]*corev1.Service
	secrets         map[string]*corev1.Secret
	pdbs            []*policyv1.PodDisruptionBudget
	networkPolicies []*networkingv1.NetworkPolicy
	serviceMonitors []*serviceMonitor
	prometheusRules []*prometheusRule
	kinds           []string
}

// serviceMonitor and prometheusRule are the Prometheus Operator fields the
// chart uses (its CRDs have no Go types in k8s.io/api).
type serviceMonitor struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path"`
			Interval    string `json:"interval"`
			Relabelings []struct {
				TargetLabel string `json:"targetLabel"`
				Replacement string `json:"replacement"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type prometheusRule struct {
	metav1.TypeMeta `json:",inline"`
	Metadata        metav1.ObjectMeta `json:"metadata"`
	Spec            ruleFile          `json:"spec"`
}

// helmTemplate lints the chart with the values files and renders it.
func helmTemplate(t *testing.T, values ...string) *rendered {
	t.Helper()
	helm := tool(t, "helm")
	args := []string{chart}
	for _, v := range values {
		args = append(args, "-f", filepath.Join(chart, v))
	}
	runIn(t, repo, nil, helm, append([]string{"lint", "--strict"}, args...)...)
	out, err := command(repo, nil, helm, append([]string{"template", "t", "--namespace", "wsb"}, args...)...).Output()
	if err != nil {
		t.Fatalf("helm template %v: %v", args, err)
	}
	r := &rendered{deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{}, secrets: map[string]*corev1.Secret{}}
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(out), -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("rendered document: %v\n%s", err, doc)
		}
		r.kinds = append(r.kinds, tm.Kind)
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			d := new(appsv1.Deployment)
			obj = d
			defer func() { r.deployments[d.Name] = d }()
		case "v1 Service":
			s := new(corev1.Service)
			obj = s
			defer func() { r.services[s.Name] = s }()
		case "v1 Secret":
			s := new(corev1.Secret)
			obj = s
			defer func() { r.secrets[s.Name] = s }()
		case "v1 ServiceAccount":
			obj = new(corev1.ServiceAccount)
		case "policy/v1 PodDisruptionBudget":
			p := new(policyv1.PodDisruptionBudget)
			obj = p
			r.pdbs = append(r.pdbs, p)
		case "networking.k8s.io/v1 NetworkPolicy":
			p := new(networkingv1.NetworkPolicy)
			obj = p
			r.networkPolicies = append(r.networkPolicies, p)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			m := new(serviceMonitor)
			obj = m
			r.serviceMonitors = append(r.serviceMonitors, m)
		case "monitoring.coreos.com/v1 PrometheusRule":
			p := new(prometheusRule)
			obj = p
			r.prometheusRules = append(r.prometheusRules, p)
		default:
			t.Fatalf("rendered %s %s, which this test does not decode:\n%s", tm.APIVersion, tm.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s does not decode strictly into its API type: %v\n%s", tm.Kind, err, doc)
		}
	}
	return r
}

func stripComments(doc string) string {
	return regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")
}

// checkWorkloads checks what every rendering must hold: for each Deployment
// its probes, resources, restricted security context, environment and
// Secret, a PodDisruptionBudget, and Services that select its pods by
// ports it has.
func checkWorkloads(t *testing.T, r *rendered, secretName string, wantPDB bool) {
	t.Helper()
	if len(r.deployments) == 0 {
		t.Fatal("no Deployment rendered")
	}
	for name, d := range r.deployments {
		pod := d.Spec.Template
		if !labelsMatch(d.Spec.Selector.MatchLabels, pod.Labels) {
			t.Errorf("%s: selector %v does not match pod labels %v", name, d.Spec.Selector.MatchLabels, pod.Labels)
		}
		ps := pod.Spec.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil {
			t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and a seccomp profile", name, ps)
		}
		if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
			t.Errorf("%s: mounts a service account token it does not use", name)
		}
		if len(pod.Spec.Containers) != 1 {
			t.Fatalf("%s: %d containers, want 1", name, len(pod.Spec.Containers))
		}
		c := pod.Spec.Containers[0]
		ports := map[string]bool{}
		for _, p := range c.Ports {
			ports[p.Name] = true
		}
		for what, p := range map[string]*corev1.Probe{"/healthz": c.LivenessProbe, "/readyz": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != what || !ports[p.HTTPGet.Port.String()] {
				t.Errorf("%s: want an HTTP probe of %s on a container port, got %+v", name, what, p)
			}
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resources %+v, want cpu and memory requests and a memory limit", name, c.Resources)
		}
		sc := c.SecurityContext
		if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: container securityContext %+v, want a read-only root, no privilege escalation, all capabilities dropped", name, sc)
		}
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].SecretRef == nil || c.EnvFrom[0].SecretRef.Name != secretName {
			t.Errorf("%s: envFrom %+v, want the Secret %s", name, c.EnvFrom, secretName)
		}
		seen := map[string]bool{}
		for _, e := range c.Env {
			if seen[e.Name] {
				t.Errorf("%s: environment variable %s set twice", name, e.Name)
			}
			seen[e.Name] = true
		}
		for _, v := range pod.Spec.Volumes {
			if v.Secret != nil && strings.HasPrefix(v.Name, "secret") && v.Secret.SecretName != secretName {
				t.Errorf("%s: volume %s mounts Secret %s, want %s", name, v.Name, v.Secret.SecretName, secretName)
			}
		}
		if _, ok := r.secrets[secretName]; !ok && secretName == "t-wsbridge" {
			t.Errorf("%s: the Secret %s it reads is not rendered", name, secretName)
		}
		pdb := slices.ContainsFunc(r.pdbs, func(p *policyv1.PodDisruptionBudget) bool {
			return p.Spec.Selector != nil && labelsMatch(p.Spec.Selector.MatchLabels, pod.Labels)
		})
		if pdb != wantPDB {
			t.Errorf("%s: PodDisruptionBudget rendered %v, want %v", name, pdb, wantPDB)
		}
	}
	for name, s := range r.services {
		var target *appsv1.Deployment
		for _, d := range r.deployments {
			if labelsMatch(s.Spec.Selector, d.Spec.Template.Labels) {
				target = d
			}
		}
		if target == nil {
			t.Errorf("Service %s selects no Deployment's pods (%v)", name, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			if !slices.ContainsFunc(target.Spec.Template.Spec.Containers[0].Ports, func(cp corev1.ContainerPort) bool {
				return cp.Name == p.TargetPort.String()
			}) {
				t.Errorf("Service %s port %s targets %s, which %s does not have", name, p.Name, p.TargetPort.String(), target.Name)
			}
		}
	}
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func envOf(d *appsv1.Deployment) map[string]string {
	env := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
	}
	return env
}

func TestHelmChartDefault(t *testing.T) {
	r := helmTemplate(t)
	checkWorkloads(t, r, "t-wsbridge", true)
	bridge, gateway := r.deployments["t-wsbridge-bridge"], r.deployments["t-wsbridge-gateway"]
	if bridge == nil || gateway == nil {
		t.Fatalf("Deployments %v, want t-wsbridge-bridge and t-wsbridge-gateway", mapKeys(r.deployments))
	}
	if got := r.secrets["t-wsbridge"].StringData["WSBRIDGE_NATS_URL"]; got != "nats://nats:4222" {
		t.Errorf("Secret WSBRIDGE_NATS_URL = %q, want the NATS chart's service nats://nats:4222", got)
	}
	if got, want := envOf(bridge)["WSBRIDGE_PUSH_URL"], "http://t-wsbridge-gateway-push.wsb.svc:8081/push"; got != want {
		t.Errorf("bridge WSBRIDGE_PUSH_URL = %q, want the edge's push Service %q", got, want)
	}
	if push := r.services["t-wsbridge-gateway-push"]; push == nil || push.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("push Service %+v, want a ClusterIP Service t-wsbridge-gateway-push", push)
	}
	for _, p := range r.services["t-wsbridge-gateway"].Spec.Ports {
		if p.TargetPort.String() != "ws" {
			t.Errorf("client Service exposes port %s (target %s); want only the WebSocket port", p.Name, p.TargetPort.String())
		}
	}
	if len(r.serviceMonitors)+len(r.prometheusRules)+len(r.networkPolicies) != 0 {
		t.Errorf("default renders optional objects: %v", r.kinds)
	}
}

func TestHelmChartAllOptions(t *testing.T) {
	r := helmTemplate(t, "ci/all-values.yaml")
	checkWorkloads(t, r, "ws", true)
	var values struct {
		Config  map[string]any
		Bridge  struct{ Config map[string]any }
		Gateway struct{ Config map[string]any }
	}
	if err := yaml.Unmarshal(readRepoFile(t, chart+"/ci/all-values.yaml"), &values); err != nil {
		t.Fatal(err)
	}
	// Every setting given in values reaches the container as WSBRIDGE_<KEY>.
	for dep, cfg := range map[string]map[string]any{"ws-bridge": values.Bridge.Config, "ws-gateway": values.Gateway.Config} {
		d := r.deployments[dep]
		if d == nil {
			t.Fatalf("no Deployment %s", dep)
		}
		env := envOf(d)
		for k, v := range cfg {
			name := "WSBRIDGE_" + strings.ToUpper(strings.ReplaceAll(k, "-", "_"))
			want := fmt.Sprint(v)
			if f, ok := v.(float64); ok {
				want = strconv.FormatFloat(f, 'f', -1, 64)
			}
			if got := env[name]; got != want {
				t.Errorf("%s: %s = %q, want %q from values", dep, name, got, want)
			}
		}
		if env["WSBRIDGE_LOG_LEVEL"] != "debug" || env["WSBRIDGE_PREFIX"] != "chat" {
			t.Errorf("%s: shared config not applied: LOG_LEVEL %q PREFIX %q", dep, env["WSBRIDGE_LOG_LEVEL"], env["WSBRIDGE_PREFIX"])
		}
		if env["WSBRIDGE_NATS_CREDS"] != "/etc/wsbridge/secret/nats.creds" {
			t.Errorf("%s: WSBRIDGE_NATS_CREDS = %q, want the mounted Secret file", dep, env["WSBRIDGE_NATS_CREDS"])
		}
	}
	if gw := envOf(r.deployments["ws-gateway"]); gw["WSBRIDGE_TLS_CERT"] == "" || gw["WSBRIDGE_PUSH_URL"] != "http://$(POD_IP):8082/push" {
		t.Errorf("gateway: TLS_CERT %q PUSH_URL %q; want the TLS Secret's file and the pod's own push address", gw["WSBRIDGE_TLS_CERT"], gw["WSBRIDGE_PUSH_URL"])
	}
	// gateway.sysctls join the pod security context of the gateway only.
	if sc := r.deployments["ws-gateway"].Spec.Template.Spec.SecurityContext; sc == nil || len(sc.Sysctls) != 1 ||
		sc.Sysctls[0].Name != "net.core.somaxconn" || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("gateway pod security context %+v: want podSecurityContext with the sysctl net.core.somaxconn from values", sc)
	}
	if sc := r.deployments["ws-bridge"].Spec.Template.Spec.SecurityContext; sc == nil || len(sc.Sysctls) != 0 {
		t.Errorf("bridge pod security context %+v: want no sysctls", sc)
	}
	s := r.secrets["ws"]
	for _, k := range []string{"WSBRIDGE_NATS_URL", "WSBRIDGE_PUSH_URL", "WSBRIDGE_PUSH_TOKEN", "nats.creds", "nats-ca.pem", "nats-tls.key"} {
		if s == nil || s.StringData[k] == "" {
			t.Errorf("Secret ws lacks %s", k)
		}
	}
	if len(r.serviceMonitors) != 2 || len(r.prometheusRules) != 1 || len(r.networkPolicies) != 1 {
		t.Fatalf("rendered %d ServiceMonitors, %d PrometheusRules, %d NetworkPolicies; want 2, 1, 1", len(r.serviceMonitors), len(r.prometheusRules), len(r.networkPolicies))
	}
	// The push port admits the bridges and the other gateway instances,
	// which ask a vanished instance there whether it is alive and take
	// resumed sessions from each other.
	var pushFrom []string
	for _, in := range r.networkPolicies[0].Spec.Ingress {
		for _, p := range in.Ports {
			if p.Port == nil || p.Port.String() != "push" {
				continue
			}
			for _, f := range in.From {
				if f.PodSelector != nil {
					pushFrom = append(pushFrom, f.PodSelector.MatchLabels["app.kubernetes.io/component"])
				}
			}
		}
	}
	slices.Sort(pushFrom)
	if !slices.Equal(pushFrom, []string{"bridge", "gateway"}) {
		t.Errorf("the push port admits pods of %v, want the bridge's and the gateway's", pushFrom)
	}
	jobs := []string{}
	for _, m := range r.serviceMonitors {
		for _, e := range m.Spec.Endpoints {
			for _, rl := range e.Relabelings {
				if rl.TargetLabel == "job" {
					jobs = append(jobs, rl.Replacement)
				}
			}
		}
		if m.Metadata.Labels["release"] != "prometheus" {
			t.Errorf("ServiceMonitor %s lacks the selector label from values", m.Metadata.Name)
		}
	}
	slices.Sort(jobs)
	if !slices.Equal(jobs, []string{"wsbridge-bridge", "wsbridge-gateway"}) {
		t.Errorf("ServiceMonitor jobs %v, want wsbridge-bridge and wsbridge-gateway (the alert rules' jobs)", jobs)
	}
	// The PrometheusRule carries exactly deploy/prometheus/alerts.yml, and promtool accepts it.
	spec, err := yaml.Marshal(r.prometheusRules[0].Spec)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "rule.yml")
	if err := os.WriteFile(f, spec, 0o644); err != nil {
		t.Fatal(err)
	}
	runIn(t, repo, nil, tool(t, "promtool"), "check", "rules", f)
	if got, want := len(readAlerts(t, spec)), len(readAlerts(t, readRepoFile(t, "deploy/prometheus/alerts.yml"))); got != want {
		t.Errorf("PrometheusRule has %d alerts, alerts.yml %d", got, want)
	}
}

func TestHelmChartExistingSecret(t *testing.T) {
	r := helmTemplate(t, "ci/existing-secret-values.yaml")
	checkWorkloads(t, r, "wsbridge-nats", false)
	if len(r.secrets) != 0 || len(r.deployments) != 1 || len(r.serviceMonitors) != 1 {
		t.Errorf("rendered %v; want no Secret, only the bridge, one ServiceMonitor", r.kinds)
	}
	d := r.deployments["t-wsbridge-bridge"]
	var items []string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			for _, it := range v.Secret.Items {
				items = append(items, it.Key)
			}
		}
	}
	if !slices.Equal(items, []string{"nats.creds", "nats-ca.pem"}) {
		t.Errorf("mounted Secret keys %v, want the existingFiles [nats.creds nats-ca.pem]", items)
	}
	if env := envOf(d); env["WSBRIDGE_NATS_TLS_CA"] != "/etc/wsbridge/secret/nats-ca.pem" || env["WSBRIDGE_PUSH_URL"] != "" {
		t.Errorf("bridge env %v: want NATS_TLS_CA from the mounted file and the push URL left to the Secret", env)
	}
}

// TestHelmChartSettingsAreFlags checks that every WSBRIDGE_* variable the
// chart sets (all options on) is a flag of the command it runs, as listed by
// `wsbridge bridge --help` and `wsbridge gateway --help`.
func TestHelmChartSettingsAreFlags(t *testing.T) {
	r := helmTemplate(t, "ci/all-values.yaml")
	bin := wsbridgeBinary(t)
	secretKeys := []string{}
	for k := range r.secrets["ws"].StringData {
		if strings.HasPrefix(k, "WSBRIDGE_") {
			secretKeys = append(secretKeys, k)
		}
	}
	for dep, cmd := range map[string]string{"ws-bridge": "bridge", "ws-gateway": "gateway"} {
		t.Run(cmd, func(t *testing.T) {
			help, _ := command(repo, nil, bin, cmd, "--help").CombinedOutput()
			flags := map[string]bool{}
			for _, m := range regexp.MustCompile(`\[(WSBRIDGE_[A-Z0-9_]+)\]`).FindAllStringSubmatch(string(help), -1) {
				flags[m[1]] = true
			}
			if len(flags) == 0 {
				t.Fatalf("wsbridge %s --help lists no variables:\n%s", cmd, help)
			}
			var unknown []string
			for name := range envOf(r.deployments[dep]) {
				if strings.HasPrefix(name, "WSBRIDGE_") && !flags[name] {
					unknown = append(unknown, name)
				}
			}
			for _, k := range secretKeys {
				if !flags[k] && !(cmd == "gateway" && k == "WSBRIDGE_PUSH_URL") {
					unknown = append(unknown, k+" (Secret)")
				}
			}
			slices.Sort(unknown)
			if len(unknown) > 0 {
				t.Errorf("wsbridge %s has no flag for %s", cmd, strings.Join(unknown, ", "))
			}
		})
	}
}

func mapKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// TestStrictDecodeRejectsUnknownFields shows the decoding above would catch a
// misspelt field in a template.
func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	doc := "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 2\n"
	if err := yaml.UnmarshalStrict([]byte(doc), new(appsv1.Deployment)); err == nil || !strings.Contains(err.Error(), "replica") {
		t.Errorf("misspelt field: err = %v, want an unknown-field error naming it", err)
	}
}

// TestHelmChartRejectsBadValues: the chart's values schema turns a misspelt
// or malformed value into a clear error instead of a silently ignored one.
func TestHelmChartRejectsBadValues(t *testing.T) {
	helm := tool(t, "helm")
	for _, tc := range []struct{ values, want string }{
		{"gateway:\n  enabeld: false\n", "enabeld"},
		{"bridge:\n  config:\n    'PUSH CONCURRENCY': 8\n", "PUSH CONCURRENCY"},
		{"secret:\n  existingFiles: [creds.txt]\n", "existingFiles"},
		{"gateway:\n  service:\n    type: Ingress\n", "type"},
	} {
		f := filepath.Join(t.TempDir(), "values.yaml")
		if err := os.WriteFile(f, []byte(tc.values), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := command(repo, nil, helm, "template", "t", chart, "-f", f).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "schema") || !strings.Contains(string(out), tc.want) {
			t.Errorf("values %q: err %v, output %s; want a schema error naming %q", tc.values, err, out, tc.want)
		}
	}
}

// TestHelmChartNotes renders NOTES.txt (which `helm template` skips) by
// wrapping it as a manifest in a copy of the chart.
func TestHelmChartNotes(t *testing.T) {
	helm := tool(t, "helm")
	dir := filepath.Join(t.TempDir(), "wsbridge")
	runIn(t, repo, nil, "cp", "-rL", chart, dir)
	notes, err := os.ReadFile(filepath.Join(dir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	wrapped := "notes: |\n  " + strings.ReplaceAll(string(notes), "\n", "\n  ")
	if err := os.WriteFile(filepath.Join(dir, "templates", "notes-check.yaml"), []byte(wrapped), 0o644); err != nil {
		t.Fatal(err)
	}
	for values, want := range map[string]string{"": "ws://t-wsbridge-gateway.wsb.svc:80/ws", "ci/all-values.yaml": "wss://ws-gateway.wsb.svc:443/ws"} {
		args := []string{"template", "t", dir, "--namespace", "wsb", "--show-only", "templates/notes-check.yaml"}
		if values != "" {
			args = append(args, "-f", filepath.Join(dir, values))
		}
		out := runIn(t, repo, nil, helm, args...)
		if !strings.Contains(out, want) {
			t.Errorf("NOTES with values %q lack %q:\n%s", values, want, out)
		}
	}
}
