// Command goproducer sends the interop scenarios with Go Machinery v2 and prints one JSON line
// per scenario on stdout. Broker and backend come from Go Machinery's environment variables
// (see internal/setup).
//
//	goproducer [-send-only] [-timeout 30s] [-key PREFIX] [-chords N] SCENARIO...
//
// Scenarios: single, group, chain (= 48), chain_immutable (= 40), chord (= 20), eta, retry,
// retry_later, on_error, types, failure, chords (N chords of count tasks, each execution counted
// in Redis), followups (a chain, an OnError and a chord whose follow-ups go to -capture). With -send-only nothing is awaited: the line carries the UUIDs only.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/RichardKnop/machinery/v2"
	"github.com/RichardKnop/machinery/v2/backends/result"
	"github.com/RichardKnop/machinery/v2/tasks"

	"machinery-interop/cmd/internal/setup"
)

type value struct {
	Type  string      `json:"type"`
	Value interface{} `json:"value"`
}

type line struct {
	Scenario  string            `json:"scenario"`
	UUIDs     []string          `json:"uuids"`
	Results   [][]value         `json:"results"`
	Errors    []string          `json:"errors"`
	ElapsedMS int64             `json:"elapsed_ms"`
	Extra     map[string]string `json:"extra,omitempty"`
}

var (
	server   *machinery.Server
	sendOnly bool
	timeout  time.Duration
	key      string
	nChords  int
	capture  string
)

func i64(vs ...int64) []tasks.Arg {
	args := make([]tasks.Arg, len(vs))
	for i, v := range vs {
		args[i] = tasks.Arg{Type: "int64", Value: v}
	}
	return args
}

func sig(name string, args []tasks.Arg) *tasks.Signature {
	s, err := tasks.NewSignature(name, args)
	must(err)
	return s
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "goproducer:", err)
		os.Exit(1)
	}
}

func values(vs []reflect.Value) []value {
	out := make([]value, len(vs))
	for i, v := range vs {
		out[i] = value{Type: v.Type().String(), Value: v.Interface()}
	}
	return out
}

// collect waits for each result in order and records its values or error text.
func collect(l *line, getters ...func() ([]reflect.Value, error)) {
	if sendOnly {
		return
	}
	for _, get := range getters {
		vs, err := get()
		if err != nil {
			l.Results = append(l.Results, nil)
			l.Errors = append(l.Errors, err.Error())
			continue
		}
		l.Results = append(l.Results, values(vs))
		l.Errors = append(l.Errors, "")
	}
}

func wait(r *result.AsyncResult) func() ([]reflect.Value, error) {
	return func() ([]reflect.Value, error) { return r.GetWithTimeout(timeout, 20*time.Millisecond) }
}

func send(s *tasks.Signature) *result.AsyncResult {
	r, err := server.SendTask(s)
	must(err)
	return r
}

func everyType() []tasks.Arg {
	return []tasks.Arg{
		{Type: "bool", Value: true},
		{Type: "int", Value: -7},
		{Type: "int8", Value: -8},
		{Type: "int16", Value: -16},
		{Type: "int32", Value: -32},
		{Type: "int64", Value: int64(-9007199254740993)},
		{Type: "uint", Value: uint(7)},
		{Type: "uint8", Value: uint8(8)},
		{Type: "uint16", Value: uint16(16)},
		{Type: "uint32", Value: uint32(32)},
		{Type: "uint64", Value: uint64(18446744073709551615)},
		{Type: "float32", Value: float32(1.5)},
		{Type: "float64", Value: 0.1},
		{Type: "string", Value: "héllo <&> \"q\""},
		{Type: "[]bool", Value: []bool{true, false}},
		{Type: "[]int", Value: []int{1, -2}},
		{Type: "[]int8", Value: []int8{-128, 127}},
		{Type: "[]int16", Value: []int16{-32768, 32767}},
		{Type: "[]int32", Value: []int32{-2147483648, 2147483647}},
		{Type: "[]int64", Value: []int64{-9223372036854775808, 9223372036854775807}},
		{Type: "[]uint", Value: []uint{0, 1}},
		{Type: "[]uint8", Value: []uint8{0, 255}},
		{Type: "[]uint16", Value: []uint16{0, 65535}},
		{Type: "[]uint32", Value: []uint32{0, 4294967295}},
		{Type: "[]uint64", Value: []uint64{0, 18446744073709551615}},
		{Type: "[]float32", Value: []float32{0.5, -2.25}},
		{Type: "[]float64", Value: []float64{1e-7, 12345.678}},
		{Type: "[]string", Value: []string{"a", ""}},
		{Type: "[]byte", Value: []byte("bytes\x00\xff")},
	}
}

func run(name string) line {
	l := line{Scenario: name}
	start := time.Now()
	switch name {
	case "single":
		s := sig("add", i64(1, 1))
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "failure":
		s := sig("fail", nil)
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "types":
		s := sig("echo", everyType())
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "group":
		g, err := tasks.NewGroup(sig("add", i64(1, 1)), sig("add", i64(2, 2)), sig("add", i64(3, 3)))
		must(err)
		rs, err := server.SendGroup(g, 0)
		must(err)
		l.UUIDs = append([]string{g.GroupUUID}, g.GetUUIDs()...)
		for _, r := range rs {
			collect(&l, wait(r))
		}
	case "chain", "chain_immutable":
		first := sig("add", i64(1, 1))
		first.Immutable = name == "chain_immutable"
		c, err := tasks.NewChain(first, sig("add", i64(5, 5)), sig("multiply", i64(4)))
		must(err)
		r, err := server.SendChain(c)
		must(err)
		for _, s := range c.Tasks {
			l.UUIDs = append(l.UUIDs, s.UUID)
		}
		collect(&l, func() ([]reflect.Value, error) { return r.GetWithTimeout(timeout, 20*time.Millisecond) })
	case "chord":
		g, err := tasks.NewGroup(sig("add", i64(1, 1)), sig("add", i64(5, 5)))
		must(err)
		c, err := tasks.NewChord(g, sig("multiply", nil))
		must(err)
		r, err := server.SendChord(c, 0)
		must(err)
		l.UUIDs = append([]string{g.GroupUUID, c.Callback.UUID}, g.GetUUIDs()...)
		collect(&l, func() ([]reflect.Value, error) { return r.GetWithTimeout(timeout, 20*time.Millisecond) })
	case "eta":
		s := sig("add", i64(2, 3))
		eta := time.Now().UTC().Add(2 * time.Second)
		s.ETA = &eta
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "retry":
		s := sig("flaky", nil)
		s.RetryCount = 1
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "retry_later":
		s := sig("retry_later", []tasks.Arg{{Type: "string", Value: key + ":retry_later"}})
		r := send(s)
		l.UUIDs = []string{s.UUID}
		collect(&l, wait(r))
	case "on_error":
		cb := sig("report_error", nil)
		s := sig("fail", nil)
		s.OnError = []*tasks.Signature{cb}
		r := send(s)
		l.UUIDs = []string{s.UUID, cb.UUID}
		collect(&l, wait(r), wait(result.NewAsyncResult(cb, server.GetBackend())))
	case "chords":
		// members count(PREFIX:i:j, i, j) = i+j, callback count(PREFIX:i, ...) = 3i+6: every
		// execution is counted in Redis, with the language that ran it in <key>:who
		// one deadline for all the chords, so that lost callbacks cost -timeout once, not each
		var getters []func() ([]reflect.Value, error)
		deadline := time.Now().Add(timeout)
		left := func() time.Duration {
			if d := time.Until(deadline); d > 2*time.Second {
				return d
			}
			return 2 * time.Second
		}
		for i := 0; i < nChords; i++ {
			var members []*tasks.Signature
			for j := int64(1); j <= 3; j++ {
				args := append([]tasks.Arg{{Type: "string", Value: fmt.Sprintf("%s:%d:%d", key, i, j)}}, i64(int64(i), j)...)
				members = append(members, sig("count", args))
			}
			g, err := tasks.NewGroup(members...)
			must(err)
			cb := sig("count", []tasks.Arg{{Type: "string", Value: fmt.Sprintf("%s:%d", key, i)}})
			c, err := tasks.NewChord(g, cb)
			must(err)
			r, err := server.SendChord(c, 0)
			must(err)
			l.UUIDs = append(l.UUIDs, cb.UUID)
			getters = append(getters, func() ([]reflect.Value, error) { return r.GetWithTimeout(left(), 20*time.Millisecond) })
		}
		collect(&l, getters...)
	case "followups":
		// what a worker sends on success, on error and for a chord, routed to the capture
		// queue (-capture) that no worker consumes
		second := sig("add", i64(5, 5))
		second.RoutingKey = capture
		c, err := tasks.NewChain(sig("add", i64(1, 1)), second)
		must(err)
		_, err = server.SendChain(c)
		must(err)
		cb := sig("report_error", nil)
		cb.RoutingKey = capture
		f := sig("fail", nil)
		f.OnError = []*tasks.Signature{cb}
		send(f)
		g, err := tasks.NewGroup(sig("add", i64(1, 1)), sig("add", i64(5, 5)))
		must(err)
		chordCb := sig("multiply", nil)
		chordCb.RoutingKey = capture
		ch, err := tasks.NewChord(g, chordCb)
		must(err)
		_, err = server.SendChord(ch, 0)
		must(err)
		l.UUIDs = []string{c.Tasks[0].UUID, second.UUID, f.UUID, cb.UUID, g.GroupUUID, chordCb.UUID}
		l.UUIDs = append(l.UUIDs, g.GetUUIDs()...)
	default:
		must(fmt.Errorf("unknown scenario %q", name))
	}
	l.ElapsedMS = time.Since(start).Milliseconds()
	return l
}

func main() {
	flag.BoolVar(&sendOnly, "send-only", false, "send without waiting for results")
	flag.DurationVar(&timeout, "timeout", 30*time.Second, "wait for each result at most this long")
	flag.StringVar(&key, "key", "interop", "prefix of the Redis side-channel keys")
	flag.IntVar(&nChords, "chords", 30, "chords sent by the chords scenario")
	flag.StringVar(&capture, "capture", "", "routing key of the followups scenario's follow-up tasks")
	flag.Parse()

	var err error
	server, _, err = setup.Server()
	must(err)
	enc := json.NewEncoder(os.Stdout)
	for _, arg := range flag.Args() {
		for _, name := range strings.Split(arg, ",") {
			must(enc.Encode(run(name)))
		}
	}
}
