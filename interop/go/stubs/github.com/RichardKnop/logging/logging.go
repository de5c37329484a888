// Package logging is a small stand-in for github.com/RichardKnop/logging (not packaged by
// Debian), with the API Go Machinery's log package uses: New returns one logger per level.
// It only formats log lines; nothing of Go Machinery's wire behaviour goes through it.
package logging

import (
	"fmt"
	"io"
	stdlog "log"
	"os"
)

type level int

// Levels, indexes of the map New returns.
const (
	DEBUG level = iota
	INFO
	WARNING
	ERROR
	FATAL
)

var names = map[level]string{DEBUG: "DEBUG", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR", FATAL: "FATAL"}

// LoggerInterface is what Go Machinery calls on a logger.
type LoggerInterface interface {
	Print(...interface{})
	Printf(string, ...interface{})
	Println(...interface{})
	Fatal(...interface{})
	Fatalf(string, ...interface{})
	Fatalln(...interface{})
	Panic(...interface{})
	Panicf(string, ...interface{})
	Panicln(...interface{})
}

// Formatter is accepted for API compatibility; lines are always plain text.
type Formatter interface{}

// DefaultFormatter stands in for the upstream plain formatter.
type DefaultFormatter struct{}

// ColouredFormatter stands in for the upstream coloured formatter.
type ColouredFormatter struct{}

type logger struct{ *stdlog.Logger }

func (l logger) Print(v ...interface{})                 { l.Logger.Print(v...) }
func (l logger) Printf(format string, v ...interface{}) { l.Logger.Printf(format, v...) }
func (l logger) Println(v ...interface{})               { l.Logger.Println(v...) }
func (l logger) Fatal(v ...interface{})                 { l.Logger.Fatal(v...) }
func (l logger) Fatalf(format string, v ...interface{}) { l.Logger.Fatalf(format, v...) }
func (l logger) Fatalln(v ...interface{})               { l.Logger.Fatalln(v...) }
func (l logger) Panic(v ...interface{})                 { l.Logger.Panic(v...) }
func (l logger) Panicf(format string, v ...interface{}) { l.Logger.Panicf(format, v...) }
func (l logger) Panicln(v ...interface{})               { l.Logger.Panicln(v...) }

// New returns a logger per level: DEBUG and INFO to out, the rest to errOut (both default to
// stderr, so that a program's stdout carries only its own output).
func New(out, errOut io.Writer, f Formatter) map[level]LoggerInterface {
	if out == nil {
		out = os.Stderr
	}
	if errOut == nil {
		errOut = os.Stderr
	}
	m := make(map[level]LoggerInterface, len(names))
	for lv, name := range names {
		w := out
		if lv >= WARNING {
			w = errOut
		}
		m[lv] = logger{stdlog.New(w, fmt.Sprintf("%s: ", name), stdlog.LstdFlags|stdlog.Lmicroseconds)}
	}
	return m
}
