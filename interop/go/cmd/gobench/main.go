// Command gobench is Go Machinery v2's side of benchmarks/run.py (the Python harness runs it
// exactly like the Python systems' producers and workers). Broker, result backend and queue
// come from Go Machinery's environment variables (BROKER, RESULT_BACKEND, DEFAULT_QUEUE,
// AMQP_*; see internal/setup); BENCH_REDIS_URL is the harness's Redis, where the worker notes
// its first start, every 500th completion and the N-th (BENCH_N), as benchmarks/systems/probe.py
// does for the Python systems.
//
//	gobench worker [-c N] [-tag T]            NewWorker(tag, N).Launch()
//	gobench enqueue -n N [-warmup W]          one SendTask per task, timed: {"seconds", "n"}
//	gobench prefill -n N                      the drain's backlog, the same SendTask calls
//	gobench roundtrip -n N [-warmup W]        SendTask + AsyncResult.Get(1 ms): {"latencies"}
//
// Tasks: count(x int64) returns x (the no-op, counted), sleep_count(x int64) sleeps 10 ms
// first (the I/O-bound task), echo(x int64) returns x (round trips). BENCH_TASK chooses which
// one enqueue and prefill send (default count). Go Machinery's DEBUG and INFO loggers are
// silenced (its per-task "Processed task" line), as the Python workers run at warning level.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RichardKnop/machinery/v2"
	mlog "github.com/RichardKnop/machinery/v2/log"
	"github.com/RichardKnop/machinery/v2/tasks"
	"github.com/gomodule/redigo/redis"

	"machinery-interop/cmd/internal/setup"
)

var (
	side    *redis.Pool
	n       int64
	counter int64
	first   string
	once    sync.Once
)

func sideDo(cmd string, args ...interface{}) {
	conn := side.Get()
	defer conn.Close()
	if _, err := conn.Do(cmd, args...); err != nil {
		fmt.Fprintln(os.Stderr, "gobench: side channel:", err)
	}
}

func now() string { return strconv.FormatFloat(float64(time.Now().UnixNano())/1e9, 'f', 6, 64) }

func count(x int64) (int64, error) {
	once.Do(func() {
		first = now()
		sideDo("SET", "bench:first", first)
	})
	k := atomic.AddInt64(&counter, 1)
	if k == n {
		sideDo("SET", "bench:done", first+" "+now())
	} else if k%500 == 0 {
		sideDo("RPUSH", "bench:progress", strconv.FormatInt(k, 10)+" "+now())
	}
	return x, nil
}

func sleepCount(x int64) (int64, error) {
	time.Sleep(10 * time.Millisecond)
	return count(x)
}

func echo(x int64) (int64, error) { return x, nil }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "gobench:", err)
		os.Exit(1)
	}
}

func signature(name string, x int64) *tasks.Signature {
	s, err := tasks.NewSignature(name, []tasks.Arg{{Type: "int64", Value: x}})
	must(err)
	return s
}

func send(server *machinery.Server, name string, from, to int64) {
	for i := from; i < to; i++ {
		_, err := server.SendTask(signature(name, i))
		must(err)
	}
}

func printJSON(v interface{}) {
	out, err := json.Marshal(v)
	must(err)
	fmt.Println(string(out))
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gobench worker|enqueue|prefill|roundtrip [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	concurrency := fs.Int("c", 8, "worker concurrency")
	tag := fs.String("tag", "gobench", "consumer tag")
	count_ := fs.Int64("n", 1000, "tasks")
	warmup := fs.Int64("warmup", 0, "untimed tasks first")
	must(fs.Parse(os.Args[2:]))

	quiet := stdlog.New(io.Discard, "", 0)
	mlog.SetDebug(quiet)
	mlog.SetInfo(quiet)

	server, _, err := setup.Server()
	must(err)
	task := os.Getenv("BENCH_TASK")
	if task == "" {
		task = "count"
	}

	switch mode {
	case "worker":
		n, _ = strconv.ParseInt(os.Getenv("BENCH_N"), 10, 64)
		host, password, db, err := redisURL(os.Getenv("BENCH_REDIS_URL"))
		must(err)
		side = &redis.Pool{MaxIdle: 2, Dial: func() (redis.Conn, error) {
			return redis.Dial("tcp", host, redis.DialPassword(password), redis.DialDatabase(db))
		}}
		must(server.RegisterTasks(map[string]interface{}{"count": count, "sleep_count": sleepCount, "echo": echo}))
		must(server.NewWorker(*tag, *concurrency).Launch())
	case "enqueue", "prefill":
		send(server, task, -*warmup, 0)
		t0 := time.Now()
		send(server, task, 0, *count_)
		printJSON(map[string]interface{}{"seconds": time.Since(t0).Seconds(), "n": *count_})
	case "roundtrip":
		lat := make([]float64, 0, *count_)
		for i := -*warmup; i < *count_; i++ {
			t0 := time.Now()
			res, err := server.SendTask(signature("echo", i))
			must(err)
			values, err := res.Get(time.Millisecond)
			must(err)
			if len(values) != 1 || values[0].Int() != i {
				must(fmt.Errorf("round trip %d returned %v", i, values))
			}
			if i >= 0 {
				lat = append(lat, time.Since(t0).Seconds())
			}
		}
		printJSON(map[string]interface{}{"latencies": lat})
	default:
		must(fmt.Errorf("unknown mode %q", mode))
	}
}

// redisURL parses BENCH_REDIS_URL with the interop helper's parser (INTEROP_REDIS_URL).
func redisURL(raw string) (string, string, int, error) {
	if raw == "" {
		return "", "", 0, fmt.Errorf("BENCH_REDIS_URL is not set")
	}
	os.Setenv("INTEROP_REDIS_URL", raw)
	return setup.RedisSideChannel()
}
