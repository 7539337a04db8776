package kit

import (
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// ruleFile is the part of a Prometheus rule file these checks read.
type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func readAlerts(t *testing.T, b []byte) []rule {
	t.Helper()
	var f ruleFile
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		t.Fatalf("alert rules: %v", err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatal("alert rules: no rules")
	}
	return out
}

const runbookBase = "https://github.com/wsbridge/wsbridge/blob/main/deploy/RUNBOOK.md#"

// TestAlertRules checks the rules with promtool, runs their unit tests, and
// checks that each alert has a severity, a summary and a runbook section,
// and that the unit tests both fire it and keep it silent.
func TestAlertRules(t *testing.T) {
	promtool := tool(t, "promtool")
	runIn(t, repo, nil, promtool, "check", "rules", "deploy/prometheus/alerts.yml")
	runIn(t, repo, nil, promtool, "test", "rules", "deploy/prometheus/alerts_test.yml")

	alerts := readAlerts(t, readRepoFile(t, "deploy/prometheus/alerts.yml"))
	sections := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\w+)$`).FindAllStringSubmatch(string(readRepoFile(t, "deploy/RUNBOOK.md")), -1) {
		sections[strings.ToLower(m[1])] = true
	}
	fired, silent := unitTestOutcomes(t)
	seen := map[string]bool{}
	for _, a := range alerts {
		if a.Alert == "" {
			t.Errorf("rule %q is not an alert", a.Record)
			continue
		}
		seen[strings.ToLower(a.Alert)] = true
		if s := a.Labels["severity"]; s != "critical" && s != "warning" {
			t.Errorf("%s: severity %q, want critical or warning", a.Alert, s)
		}
		if a.Annotations["summary"] == "" {
			t.Errorf("%s: no summary", a.Alert)
		}
		anchor, ok := strings.CutPrefix(a.Annotations["runbook_url"], runbookBase)
		if !ok || anchor != strings.ToLower(a.Alert) || !sections[anchor] {
			t.Errorf("%s: runbook_url %q; want %s%s and a section \"## %s\" in deploy/RUNBOOK.md",
				a.Alert, a.Annotations["runbook_url"], runbookBase, strings.ToLower(a.Alert), a.Alert)
		}
		if !fired[a.Alert] {
			t.Errorf("%s: no unit test in alerts_test.yml fires it", a.Alert)
		}
		if !silent[a.Alert] {
			t.Errorf("%s: no unit test in alerts_test.yml keeps it silent on healthy series", a.Alert)
		}
	}
	for s := range sections {
		if !seen[s] {
			t.Errorf("deploy/RUNBOOK.md has a section %q for no alert", s)
		}
	}
}

// unitTestOutcomes reads alerts_test.yml: which alerts some case expects to
// fire, and which some case expects silent.
func unitTestOutcomes(t *testing.T) (fired, silent map[string]bool) {
	t.Helper()
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(readRepoFile(t, "deploy/prometheus/alerts_test.yml"), &f); err != nil {
		t.Fatal(err)
	}
	fired, silent = map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	return fired, silent
}
