// Command qpq-lincheck checks a history that clients of a qpq cluster recorded for
// linearizability, with porcupine (the checker etcd's robustness tests use).
//
// The model is a channel's message log as clients see it: its length, which is the
// channel's last sequence number. An enqueue that put its message at sequence s moves the
// log from s-1 to s; a read (fetch or fetchWait) that answered last_seq n saw a log of
// length n. The history is partitioned by channel; each channel must be linearizable.
//
// Input (a file, or standard input with "-"), JSON:
//
//	{"operations": [
//	  {"client": 0, "channel": "ab12…", "kind": "enqueue", "call": 10, "return": 25, "seq": 7},
//	  {"client": 3, "channel": "ab12…", "kind": "read", "call": 12, "return": 19, "seq": 6}
//	]}
//
// Times are nanoseconds on one monotonic clock. An enqueue whose client never saw an answer
// has "return": null: it may take effect at any time after its call. Which sequence number
// such a message holds (if it holds one at all) is for the caller to resolve from the
// cluster's final log before checking.
//
// Prints one line with the verdict. Exit status: 0 linearizable, 1 not linearizable,
// 2 unknown (the time limit passed), 3 unreadable input. With -html, writes porcupine's
// visualization of the history (for a failing history, the longest partial
// linearizations), for a human to inspect.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

type record struct {
	Client  int     `json:"client"`
	Channel string  `json:"channel"`
	Kind    string  `json:"kind"`
	Call    int64   `json:"call"`
	Return  *int64  `json:"return"`
	Seq     *uint64 `json:"seq"`
}

type history struct {
	Operations []record `json:"operations"`
}

type input struct {
	channel string
	enqueue bool
}

// A channel log's length, as the model's state.
func model() porcupine.Model {
	return porcupine.Model{
		Partition: func(ops []porcupine.Operation) [][]porcupine.Operation {
			by := map[string][]porcupine.Operation{}
			var order []string
			for _, op := range ops {
				c := op.Input.(input).channel
				if _, ok := by[c]; !ok {
					order = append(order, c)
				}
				by[c] = append(by[c], op)
			}
			sort.Strings(order)
			out := make([][]porcupine.Operation, 0, len(order))
			for _, c := range order {
				out = append(out, by[c])
			}
			return out
		},
		Init: func() interface{} { return uint64(0) },
		Step: func(state, in, out interface{}) (bool, interface{}) {
			length := state.(uint64)
			seq := out.(uint64)
			if in.(input).enqueue {
				return seq == length+1, seq
			}
			return seq == length, length
		},
		DescribeOperation: func(in, out interface{}) string {
			if in.(input).enqueue {
				return fmt.Sprintf("enqueue -> seq %d", out.(uint64))
			}
			return fmt.Sprintf("read -> last_seq %d", out.(uint64))
		},
		DescribeState: func(state interface{}) string {
			return fmt.Sprintf("%d messages", state.(uint64))
		},
	}
}

func operations(h history) ([]porcupine.Operation, int, error) {
	var latest int64
	for _, r := range h.Operations {
		if r.Call > latest {
			latest = r.Call
		}
		if r.Return != nil && *r.Return > latest {
			latest = *r.Return
		}
	}
	channels := map[string]bool{}
	ops := make([]porcupine.Operation, 0, len(h.Operations))
	for i, r := range h.Operations {
		if r.Channel == "" {
			return nil, 0, fmt.Errorf("operation %d: no channel", i)
		}
		if r.Seq == nil {
			return nil, 0, fmt.Errorf("operation %d: no seq (resolve unanswered enqueues from the final log first)", i)
		}
		var enqueue bool
		switch r.Kind {
		case "enqueue":
			enqueue = true
		case "read":
			if r.Return == nil {
				return nil, 0, fmt.Errorf("operation %d: a read without an answer says nothing; leave it out", i)
			}
		default:
			return nil, 0, fmt.Errorf("operation %d: unknown kind %q", i, r.Kind)
		}
		// An unanswered enqueue may take effect at any time after its call: it returns after
		// everything else.
		ret := latest + 1
		if r.Return != nil {
			ret = *r.Return
		}
		if ret < r.Call {
			return nil, 0, fmt.Errorf("operation %d: returns (%d) before its call (%d)", i, ret, r.Call)
		}
		channels[r.Channel] = true
		ops = append(ops, porcupine.Operation{
			ClientId: r.Client,
			Input:    input{channel: r.Channel, enqueue: enqueue},
			Call:     r.Call,
			Output:   *r.Seq,
			Return:   ret,
		})
	}
	return ops, len(channels), nil
}

func run() int {
	timeout := flag.Duration("timeout", 60*time.Second, "give up (verdict unknown) after this long")
	html := flag.String("html", "", "write porcupine's visualization of the history to this file")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [-timeout D] [-html FILE] HISTORY.json|-\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		return 3
	}
	var src io.Reader = os.Stdin
	if path := flag.Arg(0); path != "-" {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "qpq-lincheck:", err)
			return 3
		}
		defer f.Close()
		src = f
	}
	var h history
	dec := json.NewDecoder(src)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		fmt.Fprintln(os.Stderr, "qpq-lincheck: unreadable history:", err)
		return 3
	}
	ops, channels, err := operations(h)
	if err != nil {
		fmt.Fprintln(os.Stderr, "qpq-lincheck: unreadable history:", err)
		return 3
	}
	m := model()
	started := time.Now()
	result, info := porcupine.CheckOperationsVerbose(m, ops, *timeout)
	took := time.Since(started).Round(time.Millisecond)
	if *html != "" {
		if err := porcupine.VisualizePath(m, info, *html); err != nil {
			fmt.Fprintln(os.Stderr, "qpq-lincheck: visualization:", err)
		}
	}
	switch result {
	case porcupine.Ok:
		fmt.Printf("linearizable: %d operations, %d channels, checked in %s\n", len(ops), channels, took)
		return 0
	case porcupine.Illegal:
		fmt.Printf("NOT linearizable: %d operations, %d channels, checked in %s\n", len(ops), channels, took)
		return 1
	default:
		fmt.Printf("unknown: %d operations, %d channels, no verdict within %s\n", len(ops), channels, *timeout)
		return 2
	}
}

func main() {
	os.Exit(run())
}
