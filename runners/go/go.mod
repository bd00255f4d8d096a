module github.com/greenroom-ml/greenroom/runners/go

go 1.26.0

replace github.com/greenroom-ml/greenroom/clients/go => ../../clients/go

require (
	github.com/dmitryikh/leaves v0.0.0-20230708180554-25d19a787328
	github.com/greenroom-ml/greenroom/clients/go v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.50.0
	google.golang.org/grpc v1.85.0
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
