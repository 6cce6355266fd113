module github.com/metronome-analytics/metronome/clients/go

go 1.22
