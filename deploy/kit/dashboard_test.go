package kit

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

// dashboard is the part of a Grafana dashboard these checks read.
type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int              `json:"id"`
	Type       string           `json:"type"`
	Title      string           `json:"title"`
	Datasource *json.RawMessage `json:"datasource"`
	Targets    []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels  []panel `json:"panels"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readRepoFile(t, "deploy/grafana/wsbridge.json"), &d); err != nil {
		t.Fatalf("deploy/grafana/wsbridge.json: %v", err)
	}
	return d
}

// grafanaVars stands in for the dashboard's variables so its queries parse
// as plain PromQL: ranges become a duration, selections match anything.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "${__interval}", "1m",
	"$gateway_instance", ".*", "$gateway_job", ".*", "$instance", ".*", "$job", ".*",
)

// seriesNames parses expr and returns the metric names it selects.
func seriesNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		return nil, err
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	return names, nil
}

// dashboardSeries checks every panel of the dashboard and returns, for each
// series its queries select, the panels that use it.
func dashboardSeries(t *testing.T, d dashboard) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if p.Datasource == nil || !strings.Contains(string(*p.Datasource), "${datasource}") {
				t.Errorf("panel %q: datasource %s, want the ${datasource} variable", p.Title, rawString(p.Datasource))
			}
			for _, tg := range p.Targets {
				names, err := seriesNames(tg.Expr)
				if err != nil {
					t.Errorf("panel %q query %s does not parse as PromQL: %v\n%s", p.Title, tg.RefID, err, tg.Expr)
					continue
				}
				if !strings.Contains(tg.Expr, `instance=~"$instance"`) && !strings.Contains(tg.Expr, `instance=~"$gateway_instance"`) {
					t.Errorf("panel %q query %s ignores the instance variable: %s", p.Title, tg.RefID, tg.Expr)
				}
				for _, n := range names {
					out[n] = append(out[n], p.Title)
				}
			}
		}
	}
	walk(d.Panels)
	return out
}

func rawString(r *json.RawMessage) string {
	if r == nil {
		return "(none)"
	}
	return string(*r)
}

func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("dashboard title %q uid %q: want both (import keeps the uid)", d.Title, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	for name, typ := range map[string]string{"datasource": "datasource", "instance": "query", "gateway_instance": "query"} {
		if vars[name] != typ {
			t.Errorf("variable %q: type %q, want %q", name, vars[name], typ)
		}
	}
	// Grafana lays panels out by gridPos and tells them apart by id.
	ids := map[int]string{}
	for _, p := range d.Panels {
		if prev, dup := ids[p.ID]; dup || p.ID == 0 {
			t.Errorf("panel %q: id %d is zero or also %q's", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
	}
	series := dashboardSeries(t, d)
	// The panels the issue asks for, by the series that show them.
	for _, want := range []string{
		"wsbridge_pushes_total", "wsbridge_push_duration_seconds_bucket", "wsbridge_delivery_lag_seconds_bucket",
		"wsbridge_retries_total", "wsbridge_dead_letters_total", "wsbridge_consumer_pending",
		"wsbridge_consumer_ack_pending", "wsbridge_held_bytes", "wsbridge_dead_letter_failures_total", "wsbridge_registry_connections", "wsbridge_inbound_events_total",
		"wsbridge_position_commits_total", "wsbridge_log_rewinds_total",
		"wsbridge_nats_connected", "wsbridge_nats_reconnects_total", "process_cpu_seconds_total",
		"process_resident_memory_bytes", "wsbridge_gateway_connections", "wsbridge_gateway_connects_total",
		"wsbridge_gateway_frames_total", "wsbridge_gateway_pushes_total",
		"wsbridge_gateway_invocation_duration_seconds_bucket",
		"wsbridge_gateway_sessions_live", "wsbridge_gateway_sessions_suspended", "wsbridge_gateway_session_buffer_bytes",
		"wsbridge_gateway_session_suspends_total", "wsbridge_gateway_session_resumes_total",
		"wsbridge_gateway_session_ends_total", "wsbridge_gateway_session_refusals_total",
	} {
		if len(series[want]) == 0 {
			t.Errorf("no panel shows %s", want)
		}
	}
}

func TestPromQLParsing(t *testing.T) {
	names, err := seriesNames(`histogram_quantile(0.99, sum by (le) (rate(wsbridge_push_duration_seconds_bucket{job=~"$job",instance=~"$instance"}[$__rate_interval]))) / on() group_left max(up)`)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(names)
	if got := fmt.Sprint(names); got != "[up wsbridge_push_duration_seconds_bucket]" {
		t.Errorf("names %s, want [up wsbridge_push_duration_seconds_bucket]", got)
	}
	if _, err := seriesNames(`sum(rate(x[5m])`); err == nil {
		t.Error("an unbalanced query parsed")
	}
}
