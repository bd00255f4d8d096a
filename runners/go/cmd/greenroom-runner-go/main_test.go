package main

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseArgs(t *testing.T) {
	s, err := parseArgs([]string{"--model-dir", "d", "--name", "n", "--version", "1",
		"--address", "127.0.0.1:0", "--threads", "4", "--parent-pid", "7", "--log-format", "console"}, io.Discard)
	if err != nil || s.threads != 4 || s.parentPID != 7 || s.logFormat != "console" {
		t.Fatalf("%+v %v", s, err)
	}
	for _, args := range [][]string{
		{"--name", "n", "--version", "1", "--address", "a"},
		{"--model-dir", "d", "--name", "n", "--version", "1", "--address", "a", "--threads", "0"},
		{"--model-dir", "d", "--name", "n", "--version", "1", "--address", "a", "--log-format", "xml"},
		{"--model-dir", "d", "--name", "n", "--version", "1", "--address", "a", "extra"},
	} {
		if _, err := parseArgs(args, io.Discard); err == nil {
			t.Errorf("%v: accepted", args)
		}
	}
}

func TestListen(t *testing.T) {
	lis, bound, err := listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_ = lis.Close()
	if !strings.HasPrefix(bound, "127.0.0.1:") || strings.HasSuffix(bound, ":0") {
		t.Errorf("bound %q", bound)
	}
	path := filepath.Join(t.TempDir(), "r.sock")
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	// Leave the socket file behind, as a killed runner would.
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	_ = stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal(err)
	}
	lis, bound, err = listen("unix:" + path)
	if err != nil {
		t.Fatal(err)
	}
	_ = lis.Close()
	if bound != "unix:"+path {
		t.Errorf("bound %q", bound)
	}
}
