package main

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Summary is the run's table: what was done, what was seen, what broke.
func Summary(cfg Config, h *History, r *Report, logs []string) string {
	var b strings.Builder
	verdict := "PASS"
	if r.Failed() {
		verdict = fmt.Sprintf("FAIL (%d findings)", len(r.Findings))
	}
	fmt.Fprintf(&b, "wsbridge chaos run: %s\n", verdict)
	fmt.Fprintf(&b, "seed %d (replay: go run ./test/chaos -seed %d -duration %s -faults %s -clients %d -rate %g)\n",
		h.Run.Seed, h.Run.Seed, h.Run.Duration, h.Run.Faults, h.Run.Clients, h.Run.Rate)
	fmt.Fprintf(&b, "repeat rule %s, fan-out grace %s; history %s (re-check: go run ./test/chaos -check FILE)\n",
		h.Run.Repeat, h.Run.FanOutGrace, filepath.Join(h.Run.Dir, "history.jsonl"))
	if len(logs) > 0 {
		fmt.Fprintf(&b, "process logs: %s/{%s}\n", filepath.Dir(logs[0]), baseNames(logs))
	}
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tstarted\tended\tskipped\t")
	for _, k := range AllFaults {
		c := r.FaultsByKind[k]
		if c == [3]int{} {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t\n", k, c[0], c[1], c[2])
	}
	tw.Flush()
	b.WriteString("\n")

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "published\tacked\tno ack\t")
	for _, k := range []string{KindSend, KindUser, KindGroup, KindBroadcast, KindBulk, KindClose} {
		if n := r.PublishedByKind[k]; n > 0 {
			fmt.Fprintf(tw, "%s\t%d\t%d\t\n", k, n-r.UnackedByKind[k], r.UnackedByKind[k])
		}
	}
	tw.Flush()
	b.WriteString("\n")

	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	row := func(name string, v any, note string) { fmt.Fprintf(tw, "%s\t%v\t  %s\n", name, v, note) }
	row("connections", r.Conns, fmt.Sprintf("%d ended during the run, %d open at the end; %d registered but never held by a client", r.Ended, r.Conns-r.Ended, r.Phantoms))
	row("owed deliveries", r.Expected, "direct sends to a connection, fan-outs published while it was open")
	row("delivered", r.Delivered, fmt.Sprintf("%.2f%% of owed; %d fan-outs received beside (near an open or end)", pct(r.Delivered, r.Expected), r.Extra))
	row("lost", r.Lost, fmt.Sprintf("owed, neither received nor dead-lettered; %d more still in WS_OUT at the end", r.Pending))
	row("excused at an end", sumMap(r.Excused), fmt.Sprintf("%s; longest tail %d", mapList(r.Excused), r.MaxExcusedTail))
	row("out of order", r.OutOfOrder, fmt.Sprintf("%d of them fan-outs published before the connection opened", r.OutOfOrderEarly))
	row("repeats", r.Repeats, fmt.Sprintf("against the %s rule; %d repeats of the latest push allowed", h.Run.Repeat, r.AllowedRepeats))
	row("misdelivered", r.Misdelivered, "frames of messages not addressed to the connection")
	row("gone while live", r.GoneLive, "dead-lettered gone while the connection was still there")
	row("received and dead-lettered", r.ReceivedAndDLQ, "(information)")
	row("disconnect anomalies", r.DisconnectBad, "ended: want 1 disconnect event; open: want 0")
	row("delivery latency", quantile(r.Latency, 0.5), fmt.Sprintf("p50; p90 %v, p99 %v, max %v (publish to receipt, owed messages)",
		quantile(r.Latency, 0.9), quantile(r.Latency, 0.99), quantile(r.Latency, 1)))
	row("dead letters", sumMap(r.DeadLetters), mapList(r.DeadByKind))
	row("processes unhealthy", r.ProcsBad, fmt.Sprintf("crashed after ready, or unhealthy at the end; %d failed starts (restarted)", r.ProcStartFails))
	drain := "drained"
	if !r.Drained {
		drain = "NOT drained"
	}
	if h.Drain != nil {
		row("settle", drain, fmt.Sprintf("after %s %s", h.Drain.Waited, r.DrainDetail))
	}
	tw.Flush()
	b.WriteString("\n")

	b.WriteString("disconnect reasons by how connections ended:\n")
	var causes []string
	for c := range r.ReasonsByCause {
		causes = append(causes, c)
	}
	sort.Strings(causes)
	for _, c := range causes {
		fmt.Fprintf(&b, "  %-16s %s\n", c, mapList(r.ReasonsByCause[c]))
	}

	if len(r.Findings) > 0 {
		fmt.Fprintf(&b, "\nfindings with a fault of the kind in progress around them: %s\n", mapList(r.ByFault))
		fmt.Fprintf(&b, "findings (%d; at most %d of each category here, all in findings.txt):\n", len(r.Findings), maxPerCategory)
		shown := map[string]int{}
		for _, f := range r.Findings {
			if shown[f.Category]++; shown[f.Category] > maxPerCategory {
				continue
			}
			b.WriteString(findingLine(f))
		}
	}
	return b.String()
}

// maxPerCategory bounds the findings of one category a summary lists.
const maxPerCategory = 12

func findingLine(f Finding) string {
	near := ""
	if len(f.Near) > 0 {
		near = " [near " + strings.Join(f.Near, ", ") + "]"
	}
	return fmt.Sprintf("  [%s] %s: %s%s\n", f.Category, f.Conn, f.Detail, near)
}

// FindingsText lists every finding, one a line.
func FindingsText(r *Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		b.WriteString(findingLine(f))
	}
	return b.String()
}

// quantile of sorted durations, rounded for reading.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(q * float64(len(d)-1))
	return d[i].Round(time.Millisecond)
}

func pct(a, b int) float64 {
	if b == 0 {
		return 100
	}
	return 100 * float64(a) / float64(b)
}

func sumMap(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func mapList(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

func baseNames(paths []string) string {
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(p))
	}
	return strings.Join(out, ",")
}
