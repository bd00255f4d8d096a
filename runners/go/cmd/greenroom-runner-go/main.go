// Command greenroom-runner-go serves one LightGBM model version over the Open Inference
// Protocol (V2), with the command line and lifecycle of Greenroom's Python runner:
//
//	greenroom-runner-go --model-dir VERSION_DIR --name NAME --version V --address ADDRESS
//	                    [--threads N] [--parent-pid PID] [--log-format json|console]
//
// ADDRESS is unix:/path/to.sock or HOST:PORT (port 0: any free port). The model is
// VERSION_DIR/model.txt, LightGBM's text format (booster.save_model). Once bound, the
// runner prints exactly one stdout line, "GREENROOM_RUNNER_LISTENING <address bound>",
// then loads the model while grpc.health.v1 says NOT_SERVING (for "" and NAME), then
// SERVING. Logs go to stderr. Exit codes: 0 stopped by SIGTERM/SIGINT or because the
// parent died, 2 bad arguments, 3 the model failed to load, 4 the address could not be
// bound.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	pb "github.com/greenroom-ml/greenroom/clients/go/gen/inference"
	"github.com/greenroom-ml/greenroom/runners/go/internal/lgbm"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

const (
	listeningPrefix = "GREENROOM_RUNNER_LISTENING"
	graceTimeout    = 5 * time.Second
	parentPoll      = 500 * time.Millisecond
	maxMessageBytes = 256 * 1024 * 1024
	maxThreads      = 64
	modelFile       = "model.txt"

	exitOK         = 0
	exitBadArgs    = 2
	exitLoadFailed = 3
	exitBindFailed = 4
)

type settings struct {
	modelDir  string
	name      string
	version   string
	address   string
	threads   int
	parentPID int
	logFormat string
}

func parseArgs(args []string, stderr io.Writer) (settings, error) {
	var s settings
	fs := flag.NewFlagSet("greenroom-runner-go", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&s.modelDir, "model-dir", "", "the version directory (holds model.txt)")
	fs.StringVar(&s.name, "name", "", "the model name it answers to")
	fs.StringVar(&s.version, "version", "", "the version it answers to")
	fs.StringVar(&s.address, "address", "", "unix:/path.sock or HOST:PORT")
	fs.IntVar(&s.threads, "threads", 1, "goroutines one prediction may use")
	fs.IntVar(&s.parentPID, "parent-pid", 0, "exit when this process is gone")
	fs.StringVar(&s.logFormat, "log-format", "json", "json or console")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	var problems []string
	for _, required := range []struct{ flag, value string }{
		{"--model-dir", s.modelDir}, {"--name", s.name}, {"--version", s.version}, {"--address", s.address},
	} {
		if required.value == "" {
			problems = append(problems, required.flag+" is required")
		}
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments: %v", fs.Args()))
	}
	if s.threads < 1 || s.threads > maxThreads {
		problems = append(problems, fmt.Sprintf("--threads must be in 1..%d", maxThreads))
	}
	if s.parentPID < 0 {
		problems = append(problems, "--parent-pid must be positive")
	}
	if s.logFormat != "json" && s.logFormat != "console" {
		problems = append(problems, "--log-format must be json or console")
	}
	if len(problems) > 0 {
		return s, errors.New(strings.Join(problems, "; "))
	}
	return s, nil
}

// structlogKeys names JSON log fields as the Python runner's structlog does.
func structlogKeys(groups []string, a slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return a
	}
	switch a.Key {
	case slog.MessageKey:
		a.Key = "event"
	case slog.TimeKey:
		a.Key = "timestamp"
		a.Value = slog.StringValue(a.Value.Time().UTC().Format(time.RFC3339Nano))
	case slog.LevelKey:
		a.Key = "level"
		a.Value = slog.StringValue(strings.ToLower(a.Value.String()))
	}
	return a
}

// newLogger writes to stderr (stdout carries only the LISTENING line), model bound to all.
func newLogger(s settings) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	var handler slog.Handler
	if s.logFormat == "json" {
		opts.ReplaceAttr = structlogKeys
		handler = slog.NewJSONHandler(os.Stderr, opts)
	} else {
		handler = slog.NewTextHandler(os.Stderr, opts)
	}
	return slog.New(handler).With("component", "runner", "model", s.name, "version", s.version, "pid", os.Getpid())
}

// listen binds unix:PATH (removing a stale socket file first) or HOST:PORT; it returns
// the listener and the address bound (the real port for TCP, the unix address as given).
func listen(address string) (net.Listener, string, error) {
	if path, ok := strings.CutPrefix(address, "unix:"); ok {
		path = strings.TrimPrefix(path, "//")
		if info, err := os.Lstat(path); err == nil && info.Mode()&os.ModeSocket != 0 {
			_ = os.Remove(path)
		}
		lis, err := net.Listen("unix", path)
		return lis, address, err
	}
	lis, err := net.Listen("tcp", address)
	if err != nil {
		return nil, "", err
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, "", err
	}
	port := lis.Addr().(*net.TCPAddr).Port
	return lis, net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// parentGone closes its channel once the process pid no longer exists (or, when it was
// our direct parent, once we were re-parented).
func parentGone(pid int) <-chan struct{} {
	done := make(chan struct{})
	wasDirect := os.Getppid() == pid
	go func() {
		defer close(done)
		for {
			if wasDirect && os.Getppid() != pid {
				return
			}
			if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
				return
			}
			time.Sleep(parentPoll)
		}
	}()
	return done
}

type loaded struct {
	model *lgbm.Model
	err   error
}

func run(args []string) int {
	s, err := parseArgs(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "greenroom-runner-go: %v\n", err)
		return exitBadArgs
	}
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	// SIGTERM when the parent dies (the thread that forked us, strictly, in Linux terms);
	// caught above, so it stops the runner like any SIGTERM.
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0)
	log := newLogger(s)
	var parent <-chan struct{}
	if s.parentPID > 0 {
		parent = parentGone(s.parentPID)
	}

	lis, bound, err := listen(s.address)
	if err != nil {
		log.Error("cannot listen", "address", s.address, "error", err.Error())
		return exitBindFailed
	}
	server := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessageBytes), grpc.MaxSendMsgSize(maxMessageBytes))
	v2 := lgbm.NewServer(s.name, s.version, log)
	pb.RegisterGRPCInferenceServiceServer(server, v2)
	healthServer := health.NewServer()
	for _, service := range []string{"", s.name} {
		healthServer.SetServingStatus(service, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	healthpb.RegisterHealthServer(server, healthServer)
	reflection.Register(server)
	go func() {
		if err := server.Serve(lis); err != nil {
			log.Error("server stopped", "error", err.Error())
		}
	}()
	fmt.Fprintf(os.Stdout, "%s %s\n", listeningPrefix, bound)
	modelPath := filepath.Join(s.modelDir, modelFile)
	log.Info("listening; loading the model", "address", bound, "dir", s.modelDir)

	loading := make(chan loaded, 1)
	go func() {
		m, err := lgbm.Load(modelPath, s.threads)
		loading <- loaded{m, err}
	}()
	select {
	case <-stop:
		server.Stop()
		return exitOK
	case <-parent:
		log.Warn("parent process is gone; stopping", "parent", s.parentPID)
		server.Stop()
		return exitOK
	case result := <-loading:
		if result.err != nil {
			v2.SetUnavailable()
			log.Error("model failed to load", "error", result.err.Error())
			server.Stop()
			return exitLoadFailed
		}
		v2.SetModel(result.model)
		for _, service := range []string{"", s.name} {
			healthServer.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
		}
		log.Info("serving", "platform", lgbm.Platform, "objective", result.model.Objective,
			"features", result.model.NFeatures, "classes", result.model.NClasses, "threads", s.threads)
	}
	select {
	case sig := <-stop:
		log.Info("stopping: finishing in-flight calls", "signal", sig.String(), "grace_s", graceTimeout.Seconds())
	case <-parent:
		log.Warn("parent process is gone; stopping", "parent", s.parentPID)
	}
	healthServer.Shutdown()
	done := make(chan struct{})
	go func() {
		server.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(graceTimeout):
		log.Warn("grace period over; cancelling the calls left", "grace_s", graceTimeout.Seconds())
		server.Stop()
	}
	return exitOK
}

func main() {
	os.Exit(run(os.Args[1:]))
}
