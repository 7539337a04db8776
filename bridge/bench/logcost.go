package main

import (
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/wsbridge/wsbridge/subjects"
)

// runLogCost measures what reading the outbound log costs as bridges are
// added: every bridge reads the whole log, so the server's work and each
// bridge's grow with their number. For 1, 3 and 8 bridge processes it
// stores n messages over conns connections, starts the bridges, waits for
// every push, and prints the drain rate, the CPU of this process (the NATS
// server and the push target) and of each bridge process.
func runLogCost(n, conns int) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("wsbridge bench -logcost: %d messages over %d connections, bridges as processes (16 pushes in flight each), target answering at once\n", n, conns)
	fmt.Printf("%8s  %10s  %22s  %26s  %24s\n", "bridges", "msg/s", "server+target CPU", "CPU per bridge (mean)", "bridge CPU per log entry")
	for _, k := range []int{1, 3, 8} {
		s, _, js, done, err := benchNATS("wsbridge-bench-logcost-")
		if err != nil {
			return err
		}
		names := subjects.MustNew("")
		tg := &slowTarget{}
		srv := httptest.NewServer(tg)
		for i := 0; i < n; i++ {
			if _, err := js.PublishAsync(names.Send(subjects.Token(fmt.Sprintf("cost-conn-%06d", i%conns))), []byte("x"), stallWait); err != nil {
				return err
			}
			if i%2000 == 1999 {
				<-js.PublishAsyncComplete()
			}
		}
		<-js.PublishAsyncComplete()
		cpu0, start := cpuTime(), time.Now()
		var procs []*exec.Cmd
		for i := 0; i < k; i++ {
			cmd := exec.Command(exe, "child-scale-bridge", s.ClientURL(), fmt.Sprintf("%s/c%d/api", srv.URL, i))
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				return err
			}
			procs = append(procs, cmd)
		}
		for tg.count() < n {
			if time.Since(start) > 5*time.Minute {
				return fmt.Errorf("%d bridges: %d of %d pushed", k, tg.count(), n)
			}
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		serverCPU := cpuTime() - cpu0
		var bridgeCPU time.Duration
		for _, p := range procs {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
			bridgeCPU += p.ProcessState.UserTime() + p.ProcessState.SystemTime()
		}
		mean := bridgeCPU / time.Duration(k)
		fmt.Printf("%8d  %10.0f  %22v  %26v  %21.1f µs\n", k, float64(n)/took.Seconds(), serverCPU.Round(time.Millisecond),
			mean.Round(time.Millisecond), float64(mean.Microseconds())/float64(n))
		srv.Close()
		done()
	}
	return nil
}
