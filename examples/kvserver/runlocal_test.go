package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeNode starts a process that ps names kvserver (a copy of sleep), as
// node i of run-local.sh in dir, ignoring SIGTERM if stubborn. The
// returned channel gets its exit state once it has exited; it is reaped at
// once, as a process of a shell that exited would be.
func fakeNode(t *testing.T, dir string, i int, stubborn bool) (pid int, exited <-chan *os.ProcessState) {
	t.Helper()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	fake := filepath.Join(dir, "bin", "kvserver")
	if _, err := os.Stat(fake); err != nil {
		b, err := os.ReadFile(sleep)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(fake), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fake, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := "exec " + fake + " 60"
	if stubborn {
		// An ignored signal stays ignored across exec.
		script = "trap '' TERM; " + script
	}
	cmd := exec.Command("bash", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ch := make(chan *os.ProcessState, 1)
	go func() { cmd.Wait(); ch <- cmd.ProcessState }()
	t.Cleanup(func() { cmd.Process.Kill() })
	if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("node%d.pid", i)), []byte(fmt.Sprint(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Wait until the exec has happened: ps names it kvserver.
	for deadline := time.Now().Add(10 * time.Second); ; {
		out, _ := exec.Command("ps", "-o", "comm=", "-p", fmt.Sprint(cmd.Process.Pid)).Output()
		if strings.TrimSpace(string(out)) == "kvserver" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake node never showed as kvserver in ps: %q", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cmd.Process.Pid, ch
}

func runLocal(t *testing.T, dir string, env []string, args ...string) (string, time.Duration) {
	t.Helper()
	if _, err := exec.LookPath("ps"); err != nil {
		t.Skip("run-local.sh needs ps")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{"run-local.sh"}, args...)...)
	cmd.Env = append(append(os.Environ(), "KV_LOCAL_DIR="+dir), env...)
	began := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run-local.sh %v: %v\n%s", args, err, out)
	}
	return string(out), time.Since(began)
}

// exitedBy waits briefly for a process that run-local.sh says has exited
// to be reaped by the test.
func exitedBy(t *testing.T, what string, ch <-chan *os.ProcessState) *os.ProcessState {
	t.Helper()
	select {
	case st := <-ch:
		return st
	case <-time.After(2 * time.Second):
		t.Fatalf("%s: still running after run-local.sh stop returned", what)
		return nil
	}
}

// stop returns once the processes have exited: at once for those that
// exit on SIGTERM, after KV_LOCAL_STOP_TIMEOUT and SIGKILL for those that
// do not.
func TestRunLocal_Stop_WaitsForExit(t *testing.T) {
	dir := t.TempDir()
	_, polite := fakeNode(t, dir, 1, false)
	_, stubborn := fakeNode(t, dir, 2, true)
	out, took := runLocal(t, dir, []string{"KV_LOCAL_STOP_TIMEOUT=2"}, "stop")
	if st := exitedBy(t, "node1", polite); st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("node1 ended by %v, want SIGTERM", st)
	}
	if st := exitedBy(t, "node2", stubborn); st.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("node2 (ignores SIGTERM) ended by %v, want SIGKILL", st)
	}
	if took < 2*time.Second || !strings.Contains(out, "SIGKILL") {
		t.Errorf("stop took %v, want at least KV_LOCAL_STOP_TIMEOUT=2s before SIGKILL; output:\n%s", took, out)
	}
	for i := 1; i <= 3; i++ {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("node%d.pid", i))); !os.IsNotExist(err) {
			t.Errorf("node%d.pid left after stop (%v)", i, err)
		}
	}
}

// stop N stops that node only; a pid file whose process is not a kvserver
// (a stale one, its pid reused) is removed, and the process left alone.
func TestRunLocal_StopOne_LeavesOthers(t *testing.T) {
	dir := t.TempDir()
	_, one := fakeNode(t, dir, 1, false)
	_, two := fakeNode(t, dir, 2, false)
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	otherDone := make(chan struct{})
	go func() { other.Wait(); close(otherDone) }()
	t.Cleanup(func() { other.Process.Kill(); <-otherDone })
	os.WriteFile(filepath.Join(dir, "node3.pid"), []byte(fmt.Sprint(other.Process.Pid)), 0o644)

	runLocal(t, dir, nil, "stop", "2")
	exitedBy(t, "node2", two)
	select {
	case <-one:
		t.Fatal("stop 2 stopped node1")
	default:
	}
	runLocal(t, dir, nil, "stop", "3")
	select {
	case <-otherDone:
		t.Fatal("stop 3 stopped a process that is not a kvserver")
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := os.Stat(filepath.Join(dir, "node3.pid")); !os.IsNotExist(err) {
		t.Errorf("stale node3.pid left (%v)", err)
	}
	runLocal(t, dir, nil, "stop")
	exitedBy(t, "node1", one)
}
