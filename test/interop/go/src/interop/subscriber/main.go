// Command subscriber reads what a push server publishes on NATS as a
// bahamut server reads it: the Publication and then its Event decoded with
// elemental's MessagePack handle into our copies of the Go structs, the
// entity into the Task model. It prints {"kind":"ready"} once subscribed,
// then one JSON line per publication, and exits after -count of them.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	nats "github.com/nats-io/nats.go"

	"interop/wire"
)

func main() {
	server := flag.String("nats", nats.DefaultURL, "the NATS server")
	subject := flag.String("subject", "events", "the subject: <topic>, or <topic>.> for hierarchies")
	count := flag.Int("count", 1, "exit after this many publications")
	timeout := flag.Duration("timeout", 10*time.Second, "give up after this long")
	flag.Parse()

	nc, err := nats.Connect(*server)
	check(err)
	defer nc.Close()
	messages := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(*subject, messages)
	check(err)
	defer func() { _ = sub.Unsubscribe() }()
	// The subscription is registered on the server only once flushed: then the test may publish.
	check(nc.Flush())
	wire.PrintLine(map[string]string{"kind": "ready"})

	deadline := time.After(*timeout)
	for i := 0; i < *count; i++ {
		select {
		case msg := <-messages:
			var publication wire.Publication
			check(wire.Decode(wire.MSGPACK, msg.Data, &publication))
			var event wire.Event
			check(wire.Decode(publication.Encoding, publication.Data, &event))
			var task wire.Task
			check(wire.Decode(event.Encoding, event.Entity(), &task))
			wire.PrintLine(map[string]interface{}{
				"kind":          "publication",
				"subject":       msg.Subject,
				"topic":         publication.Topic,
				"encoding":      publication.Encoding,
				"trackingName":  publication.TrackingName,
				"trackingData":  publication.TrackingData,
				"identity":      event.Identity,
				"type":          event.Type,
				"eventEncoding": event.Encoding,
				"timestamp":     event.Timestamp.Format(time.RFC3339Nano),
				"entity":        task,
			})
		case <-deadline:
			check(fmt.Errorf("timed out after %d of %d publications", i, *count))
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "subscriber:", err)
		os.Exit(1)
	}
}
