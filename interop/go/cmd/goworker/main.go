// Command goworker is a Go Machinery v2 worker for the interop tests. Its broker, result
// backend and queue come from Go Machinery's environment variables (see internal/setup).
//
//	goworker [-tag NAME] [-concurrency N] [-queue Q]
//
// Tasks (the Python test app registers the same names, see interop/tests/pyapp.py):
//
//	add(...int64) int64, multiply(...int64) int64, fail() -> error "boom",
//	report_error(string) string ("handled: " + the error), flaky(ctx) fails while RetryCount > 0,
//	retry_later(key) returns ErrRetryTaskLater(1 s) on the first run (Redis INCR key),
//	count(key, ...int64) INCRs key and RPUSHes "go" to key:who, returns the sum (chord callback),
//	sleep(ms) int64, echo(every Go argument type) returns every argument, go_only() "go" (a
//	task the Python worker does not know; the Python app's py_only is unknown here).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/RichardKnop/machinery/v2/tasks"
	"github.com/gomodule/redigo/redis"

	"machinery-interop/cmd/internal/setup"
)

var side *redis.Pool

func sideDo(cmd string, args ...interface{}) (interface{}, error) {
	conn := side.Get()
	defer conn.Close()
	return conn.Do(cmd, args...)
}

func add(args ...int64) (int64, error) {
	var sum int64
	for _, a := range args {
		sum += a
	}
	return sum, nil
}

func multiply(args ...int64) (int64, error) {
	product := int64(1)
	for _, a := range args {
		product *= a
	}
	return product, nil
}

func fail() error { return errors.New("boom") }

func reportError(msg string) (string, error) { return "handled: " + msg, nil }

func flaky(ctx context.Context) (string, error) {
	sig := tasks.SignatureFromContext(ctx)
	if sig != nil && sig.RetryCount > 0 {
		return "", fmt.Errorf("flaky: %d retries left", sig.RetryCount)
	}
	return "ok", nil
}

func retryLater(key string) (int64, error) {
	n, err := redis.Int64(sideDo("INCR", key))
	if err != nil {
		return 0, err
	}
	if n == 1 {
		return 0, tasks.NewErrRetryTaskLater("not yet", time.Second)
	}
	return n, nil
}

func count(key string, args ...int64) (int64, error) {
	if _, err := sideDo("INCR", key); err != nil {
		return 0, err
	}
	if _, err := sideDo("RPUSH", key+":who", "go"); err != nil {
		return 0, err
	}
	return add(args...)
}

func goOnly() (string, error) { return "go", nil }

func sleep(ms int64) (int64, error) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
	return ms, nil
}

func echo(
	b bool, i int, i8 int8, i16 int16, i32 int32, i64 int64,
	u uint, u8 uint8, u16 uint16, u32 uint32, u64 uint64,
	f32 float32, f64 float64, s string,
	sb []bool, si []int, si8 []int8, si16 []int16, si32 []int32, si64 []int64,
	su []uint, su8 []uint8, su16 []uint16, su32 []uint32, su64 []uint64,
	sf32 []float32, sf64 []float64, ss []string, by []byte,
) (
	bool, int, int8, int16, int32, int64,
	uint, uint8, uint16, uint32, uint64,
	float32, float64, string,
	[]bool, []int, []int8, []int16, []int32, []int64,
	[]uint, []uint8, []uint16, []uint32, []uint64,
	[]float32, []float64, []string, []byte, error,
) {
	return b, i, i8, i16, i32, i64, u, u8, u16, u32, u64, f32, f64, s,
		sb, si, si8, si16, si32, si64, su, su8, su16, su32, su64, sf32, sf64, ss, by, nil
}

func main() {
	tag := flag.String("tag", "goworker", "consumer tag")
	concurrency := flag.Int("concurrency", 4, "concurrent tasks")
	queue := flag.String("queue", "", "custom queue (default: DEFAULT_QUEUE)")
	flag.Parse()

	host, password, db, err := setup.RedisSideChannel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	side = &redis.Pool{MaxIdle: 2, Dial: func() (redis.Conn, error) {
		return redis.Dial("tcp", host, redis.DialPassword(password), redis.DialDatabase(db))
	}}

	server, _, err := setup.Server()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	err = server.RegisterTasks(map[string]interface{}{
		"add": add, "multiply": multiply, "fail": fail, "report_error": reportError,
		"flaky": flaky, "retry_later": retryLater, "count": count, "sleep": sleep, "echo": echo,
		"go_only": goOnly,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var worker interface{ Launch() error }
	if *queue != "" {
		worker = server.NewCustomQueueWorker(*tag, *concurrency, *queue)
	} else {
		worker = server.NewWorker(*tag, *concurrency)
	}
	fmt.Fprintln(os.Stderr, "goworker: consuming")
	if err := worker.Launch(); err != nil {
		fmt.Fprintln(os.Stderr, "goworker:", err)
		os.Exit(1)
	}
}
